"""``streamgroup``: a command line for the people running Streamgroup.

This module only parses arguments and dispatches; each activity lives in its own module (inspecting,
producing, replaying, dead_lettering, trimming, with targeting for where to connect). See docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import redis

from streamgroup_core.partitions import partition_keys

from . import CLIError, dead_lettering, granting, inspecting, placing, producing, replaying, targeting, trimming
from .parsing import non_negative_int, parse_duration, positive_int
from .rendering import write_json


class _Parser(argparse.ArgumentParser):
    """Usage errors become one line and exit status 1, like every other error of the command."""

    def error(self, message: str) -> NoReturn:
        raise CLIError(f"{message} (see {self.prog} --help)")


def _checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A CLIError from a converter, reported by argparse with the option's name."""
    def wrapper(value: str) -> Any:
        try:
            return convert(value)
        except CLIError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    wrapper.__name__ = convert.__name__
    return wrapper


_count, _length, _duration = _checked(positive_int), _checked(non_negative_int), _checked(parse_duration)


def _target_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """Accepted before or after the subcommand (``default=SUPPRESS`` in subcommands keeps the earlier value)."""
    group = parser.add_argument_group("target")
    group.add_argument("--redis-url", default=default, metavar="URL",
                       help="Redis URL (default: $SG_REDIS_URL, else redis://127.0.0.1:6379/0); the password may "
                            "come from $SG_REDIS_PASSWORD; with --streamgroup, overrides the address only")
    group.add_argument("--redis-mode", default=default, choices=["standalone", "cluster", "sentinel"],
                       help="standalone (default: $SG_REDIS_MODE, else standalone), cluster (the URL lists seed "
                            "nodes, comma-separated) or sentinel (the URL lists the sentinels)")
    group.add_argument("--redis-sentinel-master", default=default, metavar="NAME",
                       help="sentinel mode: the primary's name (default: $SG_REDIS_SENTINEL_MASTER); the sentinels' "
                            "own credentials come from $SG_REDIS_SENTINEL_USERNAME and $SG_REDIS_SENTINEL_PASSWORD")
    group.add_argument("--streamgroup", default=default, metavar="NAME",
                       help="take Redis, streams, group and dead-letter streams from this StreamGroup resource")
    group.add_argument("-n", "--namespace", default=default, help="namespace of the StreamGroup (default: the "
                       "kubeconfig context's, else 'default')")
    group.add_argument("--kubeconfig", default=default, metavar="PATH", help="kubeconfig file (default: "
                       "$KUBECONFIG or ~/.kube/config; in a pod, the service account)")
    group.add_argument("--context", default=default, help="kubeconfig context (default: the current one)")


def _output(parser: argparse.ArgumentParser, default: str, choices: Sequence[str] = ("table", "json")) -> None:
    parser.add_argument("--output", "-o", choices=list(choices), default=default, help=f"(default: {default})")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="streamgroup", description="Inspect, replay, re-drive and trim Streamgroup's Redis streams.")
    _target_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        child = sub.add_parser(name, help=help, description=help)
        _target_options(child, argparse.SUPPRESS)
        return child

    status = command("status", "lag, pending count, oldest pending age and consumers of each group")
    status.add_argument("streams", nargs="*", metavar="STREAM", help="stream keys (default: the StreamGroup's)")
    status.add_argument("--group", help="only this group (default: the StreamGroup's, else all)")
    status.add_argument("--partitions", type=_count, metavar="N",
                        help="the streams are partitioned streams' names: show their N partitions and the total")
    _output(status, "table")

    pending = command("pending", "entries read by a group but not acknowledged yet")
    pending.add_argument("streams", nargs="*", metavar="STREAM", help="stream keys (default: the StreamGroup's)")
    pending.add_argument("--group", help="consumer group (default: the StreamGroup's)")
    pending.add_argument("--consumer", help="only entries held by this consumer")
    pending.add_argument("--min-idle", type=_duration, metavar="DURATION",
                         help="only entries not delivered for at least this long, e.g. 30s")
    pending.add_argument("--count", type=_count, default=100, help="at most this many per stream (default: 100)")
    _output(pending, "table")

    replay = command("replay", "print a range of entries, or add them again to a stream")
    replay.add_argument("stream")
    replay.add_argument("--from", dest="start", required=True, metavar="ID|TIME",
                        help="first entry: an ID (1700000000000-0), '-' or an ISO-8601 time with zone")
    replay.add_argument("--to", dest="end", metavar="ID|TIME", help="last entry, inclusive (default: the newest)")
    replay.add_argument("--count", type=_count, help="at most this many entries")
    replay.add_argument("--to-stream", metavar="KEY", help="XADD the entries (new IDs) to this stream instead")
    _output(replay, "json")

    dead = command("dead-letters", "list, re-drive or purge dead letters")
    dead_sub = dead.add_subparsers(dest="action", required=True, metavar="ACTION")

    def dead_command(name: str, help: str) -> argparse.ArgumentParser:
        child = dead_sub.add_parser(name, help=help, description=help)
        _target_options(child, argparse.SUPPRESS)
        return child

    listing = dead_command("list", "show dead letters: reason, original ID, deliveries, detail, time")
    listing.add_argument("stream", nargs="?", metavar="STREAM-OR-DLQ",
                         help="a dead-letter stream or its source stream (default: all of the StreamGroup's)")
    listing.add_argument("--count", type=_count, default=100, help="at most this many per stream (default: 100)")
    _output(listing, "table")

    redrive = dead_command("redrive", "add dead letters' original fields back to their stream, then delete them")
    redrive.add_argument("stream", metavar="DLQ", help="the dead-letter stream (or its source stream)")
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", metavar="ID", help="these dead letters (their IDs in the DLQ)")
    which.add_argument("--all", action="store_true", help="every dead letter there now")
    redrive.add_argument("--to", metavar="STREAM", help="add them to this stream instead of the one in sg:stream")

    purge = dead_command("purge", "delete dead letters for good (needs --yes)")
    purge.add_argument("stream", metavar="DLQ", help="the dead-letter stream (or its source stream)")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--ids", nargs="+", metavar="ID", help="these dead letters")
    which.add_argument("--all", action="store_true", help="every dead letter there now")
    which.add_argument("--older-than", type=_duration, metavar="DURATION", help="dead-lettered longer ago, e.g. 7d")
    purge.add_argument("--yes", action="store_true", help="really delete")

    prod = command("produce", "add entries from JSON lines on stdin (one flat object per line)")
    prod.add_argument("stream", help="a stream, or a partitioned stream's name with --partition-key")
    prod.add_argument("--maxlen", type=_length, help="trim the stream to about this many entries")
    prod.add_argument("--partition-key", metavar="FIELD",
                      help="the stream is partitioned: each entry goes to STREAM:{n}, n = CRC-32 of this field's "
                           "value modulo the partitions")
    prod.add_argument("--partitions", type=_count, metavar="N",
                      help="how many partitions (default: the StreamGroup's, with --streamgroup)")

    placement = command("partitions", "where each partition of a partitioned stream lives, and the slot moves "
                                      "that give every primary its share")
    placement.add_argument("stream", nargs="?", help="a partitioned stream's name (default: the StreamGroup's)")
    placement.add_argument("--partitions", type=_count, metavar="N",
                           help="how many partitions (default: the StreamGroup's, with --streamgroup)")
    _output(placement, "table")

    acl = command("acl", "print the Redis ACL rules (ACL SETUSER lines) each part needs on these streams")
    acl.add_argument("--streams", type=lambda text: [s for s in text.split(",") if s], default=[], metavar="A,B",
                     help="stream keys (default: the StreamGroup's)")
    acl.add_argument("--partitioned-streams", type=lambda text: [s for s in text.split(",") if s], default=[],
                     metavar="NAME:N,...", help="partitioned streams and their partitions, e.g. orders:16")
    acl.add_argument("--group", help="consumer group (names the users; default: the StreamGroup's)")
    acl.add_argument("--dead-letter-stream", metavar="TEMPLATE",
                     help="dead-letter stream template (default: the StreamGroup's, else {stream}:dead)")
    acl.add_argument("--user-prefix", metavar="PREFIX",
                     help="users are PREFIX-sidecar, PREFIX-operator, PREFIX-cli-read, PREFIX-cli-write "
                          "(default: sg-NAMESPACE-NAME with --streamgroup, else sg-GROUP)")
    acl.add_argument("--parts", type=lambda text: [s for s in text.split(",") if s],
                     default=["sidecar", "operator", "cli-read", "cli-write"], metavar="P,...",
                     help="which parts (default: sidecar,operator,cli-read,cli-write)")

    trim = command("trim", "remove old entries, refusing to drop any a group has not read or acknowledged")
    trim.add_argument("stream")
    how = trim.add_mutually_exclusive_group(required=True)
    how.add_argument("--maxlen", type=_length, metavar="N", help="keep the newest N entries")
    how.add_argument("--older-than", type=_duration, metavar="DURATION", help="remove entries older than this")
    trim.add_argument("--exact", action="store_true", help="trim exactly (default: approximately, whole blocks)")
    trim.add_argument("--force", action="store_true", help="trim even entries a group has not read or acknowledged")
    return parser


def _target(args: argparse.Namespace, env: dict[str, str]) -> targeting.Target:
    name = getattr(args, "streamgroup", None)
    url = getattr(args, "redis_url", None)
    if name is None:
        for option in ("namespace", "kubeconfig", "context"):
            if getattr(args, option, None) is not None:
                raise CLIError(f"--{option} only applies with --streamgroup")
        return targeting.url_target(url, env, getattr(args, "redis_mode", None),
                                    getattr(args, "redis_sentinel_master", None))
    for option in ("redis_mode", "redis_sentinel_master"):
        if getattr(args, option, None) is not None:
            raise CLIError(f"--{option.replace('_', '-')} comes from the StreamGroup with --streamgroup")
    target = targeting.load_streamgroup(name, args.namespace, args.kubeconfig, args.context)
    return targeting.with_url(target, url) if url else target


def _streams(given: Sequence[str], target: targeting.Target) -> list[str]:
    if given:
        return list(given)
    if target.streams:
        return list(target.streams)
    raise CLIError("name at least one stream, or use --streamgroup")


def status_streams(args: argparse.Namespace, target: targeting.Target) -> list[tuple[str, list[str]]]:
    """What ``status`` shows: each stream with its keys, a partitioned stream's name with its partitions."""
    if args.partitions is not None:
        if not args.streams:
            raise CLIError("--partitions goes with a partitioned stream's name")
        return [(name, partition_keys(name, args.partitions)) for name in args.streams]
    if args.streams:
        return [(name, partition_keys(name, target.partitions[name]) if name in target.partitions else [name])
                for name in args.streams]
    if not target.streams and not target.partitions:
        raise CLIError("name at least one stream, or use --streamgroup")
    partitioned = {key for name, count in target.partitions.items() for key in partition_keys(name, count)}
    return ([(key, [key]) for key in target.streams if key not in partitioned]
            + [(name, partition_keys(name, count)) for name, count in target.partitions.items()])


def _run(args: argparse.Namespace, client: redis.Redis, target: targeting.Target, stdin: TextIO, out: TextIO) -> None:
    if args.command == "status":
        group = args.group or target.group
        rows = []
        for stream, keys in status_streams(args, target):
            found = [row for key in keys for row in inspecting.group_status(client, key, group)]
            rows.extend(found)
            if keys != [stream]:
                rows.extend(inspecting.partition_total(stream, found))
        if args.output == "json":
            write_json(out, rows)
        else:
            inspecting.print_status(rows, out)
    elif args.command == "pending":
        group = args.group or target.group
        if group is None:
            raise CLIError("--group is required (or use --streamgroup)")
        rows = [row for stream in _streams(args.streams, target)
                for row in inspecting.pending_entries(client, stream, group, args.consumer, args.min_idle, args.count)]
        if args.output == "json":
            write_json(out, rows)
        else:
            inspecting.print_pending(rows, out)
    elif args.command == "replay":
        start, end = replaying.bounds(args.start, args.end)
        if args.to_stream:
            done = replaying.replay_into(client, args.stream, start, end, args.count, args.to_stream)
            ids = f" (new IDs {done.first_id} to {done.last_id})" if done.count else ""
            print(f"added {done.count} entries from {args.stream} to {args.to_stream}{ids}", file=out)
        else:
            replaying.print_range(client, args.stream, start, end, args.count, out, args.output)
    elif args.command == "dead-letters":
        _dead_letters(args, client, target, out)
    elif args.command == "produce":
        partitions = args.partitions or target.partitions.get(args.stream)
        if args.partition_key and partitions is None:
            raise CLIError(f"--partition-key needs --partitions (or a StreamGroup that partitions {args.stream!r})")
        if partitions is not None and not args.partition_key:
            raise CLIError(f"{args.stream!r} has {partitions} partitions: give --partition-key FIELD to choose one")
        count = producing.produce(client, args.stream, stdin, args.maxlen, partitions, args.partition_key)
        where = f"{partitions} partitions of " if partitions else ""
        print(f"added {count} entries to {where}{args.stream}", file=out)
    elif args.command == "partitions":
        _partitions(args, client, target, out)
    elif args.command == "trim":
        plan = trimming.plan(client, args.stream, args.maxlen, args.older_than)
        if plan.boundary is None:
            print(f"nothing to trim: {args.stream} has {plan.length} entries, {plan.nothing}", file=out)
            return
        removed = trimming.trim(client, plan, exact=args.exact, force=args.force)
        message = f"trimmed {removed} entries from {args.stream}, {plan.description}"
        if not plan.safe:
            message += f"; forced, dropping {trimming.explain(plan)}"
        if removed < plan.removes and not args.exact:
            message += (f"; {plan.removes - removed} older entries stay, since approximate trimming only removes "
                        "whole blocks (add --exact)")
        print(message, file=out)


def _acl(args: argparse.Namespace, target: targeting.Target, out: TextIO) -> None:
    keys = granting.scope(target, args.streams, granting.partitioned_streams(args.partitioned_streams),
                          args.dead_letter_stream)
    group = args.group or target.group
    prefix = args.user_prefix
    if prefix is None:
        if target.label.startswith("StreamGroup "):
            prefix = "sg-" + target.label.removeprefix("StreamGroup ").split(" ")[0].replace("/", "-")
        elif group:
            prefix = f"sg-{group}"
        else:
            raise CLIError("give --group or --user-prefix (the users' names come from them)")
    granting.print_rules(out, prefix, keys, args.parts)


def _partitions(args: argparse.Namespace, client: redis.Redis, target: targeting.Target, out: TextIO) -> None:
    if args.stream is None:
        if args.partitions is not None:
            raise CLIError("--partitions goes with a stream's name")
        streams = dict(target.partitions)
        if not streams:
            raise CLIError("name a partitioned stream and --partitions, or use --streamgroup with partitionedStreams")
    else:
        count = args.partitions or target.partitions.get(args.stream)
        if count is None:
            raise CLIError(f"how many partitions has {args.stream!r}? give --partitions N")
        streams = {args.stream: count}
    found, primaries = placing.locate(client, streams, target.connection.mode == "cluster", target.label)
    result = placing.report(found, primaries)
    if args.output == "json":
        write_json(out, result)
    else:
        placing.print_report(result, out)


def _dead_letters(args: argparse.Namespace, client: redis.Redis, target: targeting.Target, out: TextIO) -> None:
    dlqs = dead_lettering.dead_letter_streams(client, args.stream, target)
    if args.action == "list":
        for number, dlq in enumerate(dlqs):
            if number and args.output == "table":
                print(file=out)
            letters, total = dead_lettering.list_dead_letters(client, dlq, args.count)
            dead_lettering.print_dead_letters(dlq, letters, total, out, args.output)
        return
    [dlq] = dlqs
    if args.action == "redrive":
        result = dead_lettering.redrive(client, dlq, None if args.all else args.ids, args.to)
        print(dead_lettering.describe_redrive(dlq, result), file=out)
    elif args.action == "purge":
        purged = dead_lettering.purge(client, dlq, ids=args.ids, everything=args.all,
                                      older_than_seconds=args.older_than, yes=args.yes)
        print(dead_lettering.describe_purge(dlq, purged), file=out)


def main(argv: Sequence[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    out = stdout or sys.stdout
    target: targeting.Target | None = None
    try:
        args = _parser().parse_args(argv)
        target = _target(args, dict(os.environ))
        if args.command == "acl":
            _acl(args, target, out)  # prints rules, talks to no Redis
            return 0
        with targeting.connected(target) as client:
            _run(args, client, target, stdin or sys.stdin, out)
    except CLIError as exc:
        print(f"streamgroup: {targeting.redact(str(exc), target)}", file=sys.stderr)
        return 1
    except redis.AuthenticationError as exc:
        print(f"streamgroup: Redis refused the credentials for {target.label if target else 'Redis'}: "
              f"{targeting.redact(str(exc), target)}", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        where = f" ({target.label})" if target else ""
        print(f"streamgroup: Redis error{where}: {targeting.redact(str(exc), target)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("streamgroup: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
