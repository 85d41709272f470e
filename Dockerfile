# One image for the sidecar, the operator and the CLI; the Deployment picks the command.
# Build stage: the locked dependencies, then the project, into a venv. Runtime stage: the venv only, non-root.
FROM python:3.11-slim-bookworm AS build
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

FROM python:3.11-slim-bookworm
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
