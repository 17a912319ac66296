"""The composition root: flags -> Config -> logging -> credentials -> server.

Owns: sub-commands (demo), -H / -I prompting, scrubbing -p from the process title, dropping the
plaintext password after hashing, daemonising, turning user errors into one line and exit 2.
Must not: contain protocol logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from pycntlm import __version__, auth, config, context, creds, server
from pycntlm import log as logsetup
from pycntlm.errors import ConfigError, PycntlmError

log = logging.getLogger("pycntlm")


try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
    uvloop = None  # type: ignore[assignment]


def run_loop(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a coroutine on uvloop when it is installed (faster I/O), else on asyncio's loop."""
    if uvloop is None:
        asyncio.run(main())
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def _batched_log(serving: Coroutine[Any, Any, None]) -> None:
    """Serve with access lines written in batches (log.ConsoleHandler), flushed at the end."""
    logsetup.batch_access_lines(asyncio.get_running_loop().call_later)
    try:
        await serving
    finally:
        logsetup.batch_access_lines(None)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] == "demo":
            from pycntlm.demo import run_demo

            return run_demo(args[1:])
        if args and args[0] == "setup":
            from pycntlm.gitlab import setup_main

            return setup_main(args[1:])
        if args and args[0] == "doctor":
            from pycntlm.gitlab import doctor_main

            return doctor_main(args[1:])
        return _main(args)
    except ConfigError as exc:
        print(f"pycntlm: {exc}", file=sys.stderr)
        return 2
    except PycntlmError as exc:
        print(f"pycntlm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _main(args: list[str]) -> int:
    scrub_password_from_title(args)
    cfg = config.load(args)
    if cfg.show_help:
        print(config.usage())
        return 0
    if cfg.show_version:
        print(f"pycntlm {__version__}")
        return 0
    # -T: opened first (as cntlm, and before -U drops privileges); see log.py
    trace = logsetup.open_trace(cfg.trace_file) if cfg.trace_file is not None else None
    redactor = logsetup.setup(verbose=cfg.verbose, quiet=cfg.quiet, trace_fd=trace)
    redactor.add(cfg.password, cfg.pass_nt, cfg.pass_lm, cfg.pass_ntlmv2)
    if trace is not None:
        log.debug("pycntlm %s trace (pid %d) to %s", __version__, os.getpid(), cfg.trace_file)
    if cfg.print_hashes:
        return _print_hashes(cfg)
    if cfg.prompt_password:
        cfg = dataclasses.replace(cfg, password=_prompt("Password: "))
    elif cfg.password is None:
        cfg = dataclasses.replace(cfg, password=password_from_file(cfg))
    redactor.add(cfg.password)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    _warn_readable_password(cfg)
    log_flags(cfg)
    if cfg.magic_url is not None:
        from pycntlm import magic

        return magic.magic_main(cfg)
    credentials = credentials_for(cfg)
    if credentials is not None:
        for h in (credentials.nt_hash, credentials.lm_hash, credentials.ntlmv2_hash):
            if h is not None:
                redactor.add(h.hex(), bytes(b ^ 0xFF for b in h).hex())
    cfg = dataclasses.replace(cfg, password=None)  # hashed; the plaintext is not kept
    ctx = context.build(cfg, credentials)
    if cfg.check_only:
        print(f"pycntlm: configuration OK ({server.describe(cfg)})")
        return 0
    from pycntlm import frontends

    sockets = server.bind_listeners(cfg)
    try:
        frontend_bound = frontends.bind_frontends(cfg)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    try:
        if not cfg.foreground:
            daemonize(cfg.pidfile)
        elif cfg.pidfile:
            write_pidfile(cfg.pidfile)
        if cfg.uid is not None:
            server.preload(cfg)
            drop_privileges(cfg.uid)
        log.info("pycntlm %s starting; %s", __version__, server.describe(cfg))

        def reload() -> context.Context:
            return _reload(args, redactor)

        run_loop(lambda: _batched_log(server.run(ctx, reload, sockets, frontend_bound)))
    finally:
        if cfg.pidfile:
            with contextlib.suppress(OSError):
                if os.path.exists(cfg.pidfile) and _our_pidfile(cfg.pidfile):
                    os.unlink(cfg.pidfile)
    return 0


def _reload(args: list[str], redactor: logsetup.Redactor) -> context.Context:
    cfg = config.load(args)
    redactor.add(cfg.password, cfg.pass_nt, cfg.pass_lm, cfg.pass_ntlmv2)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    log_flags(cfg)
    credentials = credentials_for(cfg)
    return context.build(dataclasses.replace(cfg, password=None), credentials)


def log_flags(cfg: config.Config) -> None:
    """Flags / -F: say which NTLM flags are sent (cntlm: "Using manual NTLM flags"), and what
    in them does not fit the Auth dialect. They are sent as given anyway: experts only."""
    if cfg.flags is None:
        return
    if cfg.magic_url is not None:
        log.warning("Flags is ignored by -M: each profile uses its own flags, as in cntlm")
        return
    if cfg.auth == "GSS":
        log.warning("Flags is ignored with Auth GSS (Kerberos has no NTLM flags)")
        return
    log.info("using manual NTLM flags %s (Flags, for experts only)", auth.flag_names(cfg.flags))
    for problem in auth.flag_problems(cfg.flags, cfg.auth):
        log.warning("Flags 0x%08x: %s; sent as given", cfg.flags, problem)


def credentials_for(cfg: config.Config) -> creds.Credentials | None:
    """The configured credentials; none are needed without parents (Proxy lines or a PAC
    file), or with NTLMToBasic when no Username is configured (every client logs in itself)."""
    if not (cfg.proxies or cfg.pac) or (cfg.ntlm_to_basic and not cfg.username):
        return None
    return creds.from_config(cfg, socket.gethostname())


def password_from_file(cfg: config.Config) -> str | None:
    """PasswordFile, else systemd's credential `password` ($CREDENTIALS_DIRECTORY, set by
    LoadCredential=password:/etc/pycntlm/password), else None. Only the first line counts."""
    path = cfg.password_file
    creds_dir = os.environ.get("CREDENTIALS_DIRECTORY")
    if path is None and creds_dir and os.path.isfile(os.path.join(creds_dir, "password")):
        path = os.path.join(creds_dir, "password")
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().rstrip("\r\n")
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"PasswordFile {path}: cannot read: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by group/others: chmod 600 it", path)
    return first


def drop_privileges(user: str) -> None:
    """-U: become `user` (name or uid) after binding, dropping supplementary groups too."""
    import pwd

    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except (KeyError, ValueError):
        raise ConfigError(f"-U {user}: no such user") from None
    try:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    except PermissionError:
        raise ConfigError(f"-U {user}: only root can change user") from None
    log.info("running as %s (uid %d, gid %d)", entry.pw_name, entry.pw_uid, entry.pw_gid)


def _print_hashes(cfg: config.Config) -> int:
    """Like cntlm -H: always asks for the password (never takes one from a config file)."""
    if not cfg.username:
        raise ConfigError("-H needs a user name (-u USER or Username in the config)")
    password = _prompt("Password: ")
    sys.stdout.write(creds.hash_lines(cfg.username, cfg.domain, password))
    sys.stdout.flush()
    return 0


def _prompt(text: str) -> str:
    if not sys.stdin.isatty():
        sys.stdout.write(text)
        sys.stdout.flush()
        line = sys.stdin.readline()
        sys.stdout.write("\n")  # end the prompt's line, as a terminal would after Enter
        if not line:
            raise ConfigError("no password given on standard input")
        return line.rstrip("\r\n")
    return getpass.getpass(text)


def scrub_password_from_title(args: list[str]) -> None:
    """Hide a -p password from /proc/PID/cmdline (and ps), as cntlm does."""
    if not any(a == "-p" or (a.startswith("-p") and len(a) > 2) for a in args):
        return
    shown: list[str] = []
    hide_next = False
    for a in args:
        if hide_next:
            shown.append("*")
            hide_next = False
        elif a == "-p":
            shown.append(a)
            hide_next = True
        elif a.startswith("-p"):
            shown.append("-p*")
        else:
            shown.append(a)
    try:
        import setproctitle
    except ImportError:
        log.warning("setproctitle is not installed: -p stays visible in ps; prefer a config file")
        return
    setproctitle.setproctitle(" ".join(["pycntlm", *shown]))


def _warn_readable_password(cfg: config.Config) -> None:
    if not cfg.password or not cfg.source_path:
        return
    with contextlib.suppress(OSError):
        mode = os.stat(cfg.source_path).st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            log.warning(
                "%s holds a plaintext password and is readable by group/others: "
                "chmod 600 it, or use PassNTLMv2 hashes (pycntlm -H)",
                cfg.source_path,
            )


def _our_pidfile(path: str) -> bool:
    """Remove only a pid file that holds our PID (never a symlink or someone else's)."""
    if os.path.islink(path):
        return False
    with open(path) as f:
        return f.read().strip() == str(os.getpid())


def write_pidfile(path: str) -> None:
    """Write our PID without following a symlink; mode 0644."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot write pid file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")


def daemonize(pidfile: str | None) -> None:
    """Detach like cntlm without -f: fork twice, new session, stdio to /dev/null, syslog."""
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    _log_to_syslog()
    if pidfile:
        write_pidfile(pidfile)


def _log_to_syslog() -> None:
    from logging.handlers import SysLogHandler

    root = logging.getLogger("pycntlm")
    try:
        handler: logging.Handler = SysLogHandler(address="/dev/log")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("pycntlm[%(process)d]: %(message)s"))
    handler.addFilter(logsetup.REDACTOR)
    for h in list(root.handlers):
        if isinstance(h, logsetup.TraceHandler):
            continue  # -T: the trace goes on in the daemon
        root.removeHandler(h)
        handler.setLevel(h.level)  # the console's level and filters (-v, -q with -T)
        for f in h.filters:
            if f is not logsetup.REDACTOR:
                handler.addFilter(f)
    root.addHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
