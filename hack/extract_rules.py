"""Reads a rendered PrometheusRule on stdin and prints its rule groups as a plain rules file."""

import sys

import yaml


def block_strings(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


yaml.SafeDumper.add_representer(str, block_strings)
rule = yaml.safe_load(sys.stdin)
print(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False, width=200, indent=2), end="")
