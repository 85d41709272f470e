# Two images from one Dockerfile, both on a Python 3.11 base (BASE_IMAGE; hack/image.sh builds on a local
# Debian base with podman when there is no Docker engine or registry):
# - the default target: the operator, the CLI and the sidecar in one image; the Deployment picks the command;
# - `--target sidecar`: the sidecar alone, without the operator's and CLI's dependencies nor pip and
#   setuptools: it runs on every pod of every StreamGroup, so every node pulls it. Built FROM scratch with
#   only what it runs (hack/sidecar_rootfs.py): no shell, no package manager, whatever the base.
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Build stage: the locked dependencies, then the project, into a venv.
FROM ${BASE_IMAGE} AS build
WORKDIR /src
# The dependencies first, from the locks alone (a layer that code changes leave cached): every file checked
# against its locked hash, wheels only (no sdist build pulling unlocked build dependencies). Relock with
# `bash hack/lock.sh`.
COPY requirements requirements
RUN python -m venv /opt/streamgroup \
 && /opt/streamgroup/bin/pip install --no-cache-dir --only-binary :all: --require-hashes -r requirements/build.txt \
 && /opt/streamgroup/bin/pip install --no-cache-dir --only-binary :all: --require-hashes -r requirements/image.txt
COPY pyproject.toml README.md LICENSE ./
COPY core core
COPY sidecar sidecar
COPY operator operator
COPY cli cli
# Then the project alone, built by the locked setuptools; pip check fails the build if the locks missed a dependency.
RUN /opt/streamgroup/bin/pip install --no-cache-dir --no-deps --no-build-isolation . \
 && /opt/streamgroup/bin/pip check

# The sidecar's venv: made without pip, filled by the build tools of another venv (pip --python), so the
# tools never enter it. The project goes in as a wheel built by the locked setuptools.
FROM ${BASE_IMAGE} AS sidecar-build
WORKDIR /src
COPY requirements requirements
RUN python -m venv /opt/tools \
 && /opt/tools/bin/pip install --no-cache-dir --only-binary :all: --require-hashes -r requirements/build.txt \
 && python -m venv --without-pip /opt/streamgroup \
 && /opt/tools/bin/pip --python /opt/streamgroup/bin/python install --no-cache-dir --only-binary :all: --require-hashes -r requirements/sidecar.txt
COPY pyproject.toml README.md LICENSE ./
COPY core core
COPY sidecar sidecar
COPY operator operator
COPY cli cli
# cel-expr-python's optional CEL extensions (strings, math, encoders...: 36 of its 50 MB) are left out: the
# sidecar's CEL environment is daprd's, which enables none (tests/shipping/test_container.py runs a rule).
RUN /opt/tools/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/tools/bin/pip --python /opt/streamgroup/bin/python install --no-cache-dir --no-deps /tmp/wheels/*.whl \
 && /opt/tools/bin/pip --python /opt/streamgroup/bin/python check \
 && rm -r /opt/streamgroup/lib/python3*/site-packages/cel_expr_python/ext
# The interpreter, the standard library it uses, the shared libraries they load (asked of ldd), the venv, CA
# certificates and a passwd entry, into /rootfs: the whole of the sidecar image.
COPY hack/sidecar_rootfs.py /tmp/sidecar_rootfs.py
RUN python /tmp/sidecar_rootfs.py /opt/streamgroup /rootfs

FROM scratch AS sidecar
LABEL org.opencontainers.image.title="streamgroup-sidecar" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=sidecar-build /rootfs /
ENV PATH=/opt/streamgroup/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["streamgroup-sidecar"]

# The default target, last so that a plain `docker build .` makes it: the venv only, non-root.
FROM ${BASE_IMAGE} AS full
LABEL org.opencontainers.image.title="streamgroup" \
      org.opencontainers.image.licenses="Apache-2.0"
# The license text is in the venv, with the package's metadata (streamgroup-*.dist-info/licenses/LICENSE).
COPY --from=build /opt/streamgroup /opt/streamgroup
ENV PATH=/opt/streamgroup/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user, so runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
EXPOSE 9400
ENTRYPOINT ["streamgroup-sidecar"]
