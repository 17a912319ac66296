"""`pycntlm setup`: write the Docker / GitLab Runner proxy set-up that points at pycntlm.

Owns: the command line, choosing the pieces (cntlm.conf Listen, docker and gitlab-runner
drop-ins, config.toml runners, root's Docker config.json for dind), the report (diffs with
--dry-run, backups, "nothing to change") and the systemctl steps (printed, or run with --apply).
Must not: decide the content of a file (model.py, runners_toml.py, cntlm_conf.py do), run
systemctl when the root is not "/", or change anything with --dry-run.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from pycntlm.errors import ConfigError
from pycntlm.gitlab import cntlm_conf, files, model, noproxy_lint, runners_toml, system


@dataclass(frozen=True)
class SetupArgs:
    root: Path
    config: Path  # the cntlm.conf that gets the Listen line
    docker: bool
    runner: bool
    settings: model.Settings
    listen_from: str  # where the address came from, for the report
    toml: runners_toml.Options
    dry_run: bool
    apply: bool


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pycntlm setup",
        allow_abbrev=False,
        description="Point Docker, GitLab Runner and job containers at pycntlm on docker0. "
        "Without --docker/--gitlab-runner both are set up; --dind adds Docker-in-Docker.",
    )
    p.add_argument("--docker", action="store_true", help="docker.service drop-in")
    p.add_argument("--gitlab-runner", action="store_true", help="drop-in and config.toml")
    p.add_argument("--dind", action="store_true", help="Docker-in-Docker: NO_PROXY, config.json")
    p.add_argument("--gitlab-host", metavar="HOST", help="self-managed GitLab: goes to NO_PROXY")
    p.add_argument("--no-proxy", metavar="LIST", default="", help="more NO_PROXY entries")
    p.add_argument("--listen", metavar="IP:PORT", help="default: docker0's address, port 3128")
    p.add_argument("--runner", metavar="NAME", help="edit only this [[runners]] (default: all)")
    p.add_argument(
        "--pre-clone-script",
        action="store_true",
        help="use pre_clone_script (GitLab Runner before 15.9) instead of pre_get_sources_script",
    )
    p.add_argument("--config", metavar="FILE", help="cntlm.conf (default: ROOT/etc/cntlm.conf)")
    p.add_argument("--dry-run", action="store_true", help="show the diffs, change nothing")
    p.add_argument("--apply", action="store_true", help="also run the systemctl steps")
    p.add_argument("--root", metavar="DIR", default="/", help="work on DIR as if it were /")
    return p


def parse_args(argv: list[str]) -> SetupArgs:
    ns = parser().parse_args(argv)
    if ns.dry_run and ns.apply:
        raise ConfigError("--dry-run and --apply exclude each other")
    root = Path(ns.root)
    if ns.listen:
        host, port = model.parse_listen(ns.listen)
        listen_from = "--listen"
    else:
        found = system.docker0_ipv4()
        if found is None:
            raise ConfigError(
                "docker0 has no IPv4 address here (is Docker installed and running?); "
                "pass --listen IP:PORT"
            )
        host, port, listen_from = found, model.DEFAULT_PORT, "docker0"
    no_proxy = model.build_no_proxy(model.split_list(ns.no_proxy), ns.gitlab_host, ns.dind)
    neither = not (ns.docker or ns.gitlab_runner)
    return SetupArgs(
        root=root,
        config=Path(ns.config) if ns.config else root / model.CNTLM_CONF,
        docker=ns.docker or neither,
        runner=ns.gitlab_runner or neither,
        settings=model.Settings(host, port, no_proxy, ns.dind),
        listen_from=listen_from,
        toml=runners_toml.Options(ns.runner, ns.pre_clone_script),
        dry_run=ns.dry_run,
        apply=ns.apply,
    )


def plan(args: SetupArgs) -> tuple[list[files.Change], list[str]]:
    """Every file the set-up wants, with its current and wanted text; and notes for the
    pieces that cannot be done here."""
    s, root = args.settings, args.root
    changes: list[files.Change] = []
    notes: list[str] = []
    conf = files.read_text(args.config)
    label = _label(root, args.config)
    if conf is None:
        notes.append(
            f"{args.config} not found: add `Listen {s.host}:{s.port}` to the configuration "
            "pycntlm runs with"
        )
    else:
        new = cntlm_conf.ensure_listen(conf, str(args.config), s.host, s.port)
        changes.append(files.Change(args.config, label, conf, new))
    if args.docker:
        changes.append(_dropin(root, model.DOCKER_DROPIN, "docker", s, lower=False))
    if args.runner:
        changes.append(_dropin(root, model.RUNNER_DROPIN, "gitlab-runner", s, lower=True))
        path = root / model.RUNNER_TOML
        text = files.read_text(path)
        if text is None:
            notes.append(
                f"{path} not found: register the runner (gitlab-runner register), then run "
                "pycntlm setup again for the job containers"
            )
        else:
            new = runners_toml.edit(text, s, args.toml, str(path))
            changes.append(files.under(root, model.RUNNER_TOML, text, new, 0o600))
    if s.dind:
        path = root / model.ROOT_DOCKER_CONFIG
        old = files.read_text(path)
        new = model.root_docker_config(old, s, str(path))
        changes.append(files.under(root, model.ROOT_DOCKER_CONFIG, old, new, 0o600))
    return changes, notes


def _label(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path).lstrip("/")


def _dropin(root: Path, rel: str, unit: str, s: model.Settings, lower: bool) -> files.Change:
    old = files.read_text(root / rel)
    return files.under(root, rel, old, model.render_dropin(unit, s, lower))


def commands(changes: list[files.Change], root: Path) -> list[list[str]]:
    """The systemctl steps the changed files need, in order: the proxy first."""
    changed = {c.label for c in changes if c.changed}
    steps: list[list[str]] = []
    if any(c.changed and c.label.endswith("cntlm.conf") for c in changes):
        steps.append(["systemctl", "restart", system.proxy_unit(root)])
    if changed & {model.DOCKER_DROPIN, model.RUNNER_DROPIN}:
        steps.append(["systemctl", "daemon-reload"])
    if model.DOCKER_DROPIN in changed:
        steps.append(["systemctl", "restart", "docker"])
    if model.RUNNER_DROPIN in changed:
        steps.append(["systemctl", "restart", "gitlab-runner"])
    return steps


def report(args: SetupArgs, out: TextIO, err: TextIO) -> int:
    s = args.settings
    print(f"proxy {s.proxy_url} ({args.listen_from}), NO_PROXY={s.no_proxy_text}", file=out)
    for finding in _lint(s):
        print(f"warning: {model.format_finding(finding)}", file=err)
    changes, notes = plan(args)
    for note in notes:
        print(f"note: {note}", file=out)
    todo = [c for c in changes if c.changed]
    if not todo:
        print("nothing to change", file=out)
        return 0
    now = time.time()
    for change in changes:
        if args.dry_run:
            if change.changed:
                verb = "change" if change.old is not None else "create"
                print(f"would {verb}: {change.path}", file=out)
                out.write(files.diff(change))
            continue
        backup = files.apply(change, now)
        if not change.changed:
            print(f"unchanged: {change.path}", file=out)
        elif backup is None:
            print(f"created: {change.path}", file=out)
        else:
            print(f"changed: {change.path} (backup: {backup.name})", file=out)
    return _systemctl(args, commands(changes, args.root), out)


def _lint(s: model.Settings) -> list[model.Finding]:
    found = noproxy_lint.lint_no_proxy(s.no_proxy_text, "NO_PROXY")
    return found + noproxy_lint.lint_proxy_url("proxy", s.proxy_url, "--listen", None, True)


def _systemctl(args: SetupArgs, steps: list[list[str]], out: TextIO) -> int:
    shown = "\n".join(f"  {' '.join(step)}" for step in steps)
    check = "  systemctl show --property=Environment docker gitlab-runner\n  pycntlm doctor"
    if ["systemctl", "restart", "docker"] in steps:
        print("note: restarting docker stops running containers (CI jobs too) unless", file=out)
        print("      live-restore is enabled in /etc/docker/daemon.json", file=out)
    if args.dry_run or not args.apply:
        if steps:
            print(f"{'then run' if args.dry_run else 'now run'} (as root):\n{shown}", file=out)
        print(f"check:\n{check}", file=out)
        return 0
    if not system.is_real_root(args.root):
        print(f"--apply: not running systemctl under --root {args.root}; run:\n{shown}", file=out)
        return 0
    if not system.systemd_running():
        print(f"--apply: systemd is not running here; run these yourself:\n{shown}", file=out)
        return 0
    for step in steps:
        status, text = system.run(step)
        print(f"ran: {' '.join(step)} -> {'ok' if status == 0 else f'exit {status}'}", file=out)
        if status != 0:
            print(text, file=out)
            return 1
    print(f"check:\n{check}", file=out)
    return 0
