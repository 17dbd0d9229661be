"""Kaldi-style job dispatch: the `$train_cmd` / `$decode_cmd` / `$cuda_cmd` of a recipe's cmd.sh.

    utils/dispatch.sh BACKEND [options] [JOB=1:N] LOG COMMAND...

runs COMMAND once per task JOB = 1..N (or once, without a range), with every word `JOB` in
LOG and COMMAND replaced by the task number (whole words only: `ali.JOB.ark` and `--job JOB`
are replaced, `JOBS` is not), as Kaldi's run.pl / slurm.pl / queue.pl do. One word COMMAND is a
shell command line; several words are quoted as given. Each task's output goes to its LOG,
framed by a `# <command>` / `# Started at ...` header and an `# Ended (code C) at ...` trailer.
All tasks run even when some fail; then the failed ones are named, each with its log path
and last lines, and the exit status is 1. A task that did not finish (killed by the
scheduler: scancel, a time or memory limit) counts as failed: its log says how far it got.

Backends (`BACKENDS`):
  local  N processes, at most --max-jobs-run at once (default: the cores / --num-threads).
         A single task's output also goes to the console (as if run directly).
  slurm  one `sbatch --wait --array=1-N` per call; --mem, --num-threads, --gpu, --time,
         --num-nodes map to --mem, --cpus-per-task, --gres=gpu:G, --time, --nodes.
  sge    one `qsub -sync y -t 1-N` per call; -l mem_free/ram_free, -pe smp, -l gpu, -l h_rt.
A scheduler task runs `python -m apm.utils.dispatch task SPEC TASK` (the same framing as
local); the submission files live next to the logs, in `<log dir>/q/`.

`python -m apm.utils.dispatch torchrun --nproc-per-node G` prints the launcher of a training
run: inside a Slurm allocation, `srun` one torchrun per node with the c10d rendezvous on the
allocation's first node; elsewhere a standalone torchrun (see `torchrun_command`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from apm.utils.errors import ApmError

BACKENDS = ("local", "slurm", "sge")
USAGE = "utils/dispatch.sh {local|slurm|sge} [options] [JOB=1:N] <log> <command...>"
RANGE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\d+):(\d+)$")
OPTIONS = {  # option -> (field, type)
    "--mem": ("mem", str),
    "--num-threads": ("num_threads", int),
    "--gpu": ("gpu", int),
    "--time": ("time", str),
    "--max-jobs-run": ("max_jobs_run", int),
    "--num-nodes": ("num_nodes", int),
    "--queue-opts": ("queue_opts", str),
}
TAIL_LINES = 10  # lines of a failed task's log shown in the error


@dataclass
class Spec:
    """One dispatch call: what to run for tasks first..last and where each logs."""

    log: str  # log path pattern (with `var` when there is a range)
    command: list[str]
    var: str | None = None
    first: int = 1
    last: int = 1
    cwd: str = field(default_factory=os.getcwd)
    mem: str | None = None
    num_threads: int = 1
    gpu: int = 0
    time: str | None = None
    max_jobs_run: int = 0  # 0: as many as the backend allows
    num_nodes: int = 1
    queue_opts: str = ""

    @property
    def tasks(self) -> list[int]:
        return list(range(self.first, self.last + 1))

    def shell_command(self, task: int) -> str:
        """The command line of `task` (bash syntax)."""
        line = self.command[0] if len(self.command) == 1 else shlex.join(self.command)
        return self._fill(line, task)

    def log_path(self, task: int) -> Path:
        return Path(self.cwd, self._fill(self.log, task))

    def _fill(self, text: str, task: int) -> str:
        if self.var is None:
            return text
        return re.sub(rf"(?<![A-Za-z0-9_]){self.var}(?![A-Za-z0-9_])", str(task), text)

    @property
    def queue_dir(self) -> Path:
        """`<log dir>/q`: submission script, spec and per-task exit codes."""
        return Path(self.cwd, self.log).parent / "q"

    @property
    def name(self) -> str:
        """The log's name without the task part: `fbank` for `log/fbank.JOB.log`."""
        base = Path(self.log).name
        if self.var is not None:
            base = re.sub(rf"\.?(?<![A-Za-z0-9_]){self.var}(?![A-Za-z0-9_])", "", base)
        return base[:-4] if base.endswith(".log") else base

    def rc_path(self, task: int) -> Path:
        return self.queue_dir / f"{self.name}.{task}.rc"


def parse_args(argv: Sequence[str]) -> tuple[str, Spec]:
    """(backend, spec) of a dispatch command line; ApmError naming what is wrong."""
    args = list(argv)
    if not args or args[0] in ("-h", "--help"):
        raise ApmError(f"usage: {USAGE}")
    backend = args.pop(0)
    if backend not in BACKENDS:
        raise ApmError(
            f"unknown job backend '{backend}': expected one of {', '.join(BACKENDS)} "
            "(set cmd_backend in the recipe's cmd.sh, or APM_CMD_BACKEND)"
        )
    values: dict[str, object] = {}
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        if opt not in OPTIONS:
            raise ApmError(f"{backend}: unknown option {opt}; valid: {' '.join(OPTIONS)}")
        if not args:
            raise ApmError(f"{backend}: option {opt} needs a value")
        name, kind = OPTIONS[opt]
        value = args.pop(0)
        if kind is int:
            if not value.isdigit():
                raise ApmError(f"{backend}: {opt} takes a whole number, got '{value}'")
            values[name] = int(value)
        else:
            values[name] = value
    var, first, last = None, 1, 1
    if args and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", args[0]):
        spec = args.pop(0)
        m = RANGE.match(spec)
        if not m or not 1 <= int(m.group(2)) <= int(m.group(3)):
            raise ApmError(
                f"{backend}: malformed job range '{spec}': expected VAR=FIRST:LAST with "
                "1 <= FIRST <= LAST, e.g. JOB=1:4"
            )
        var, first, last = m.group(1), int(m.group(2)), int(m.group(3))
    if len(args) < 2:
        raise ApmError(f"{backend}: expected a log file and a command; usage: {USAGE}")
    log, command = args[0], args[1:]
    spec = Spec(log=log, command=command, var=var, first=first, last=last, **values)
    if var is not None and last > first and spec._fill(log, first) == log:
        raise ApmError(
            f"{backend}: the log {log} does not contain {var}: the {last - first + 1} tasks "
            f"would write the same file; name it e.g. {Path(log).with_suffix('')}.{var}.log"
        )
    return backend, spec


def split(items: Sequence, nj: int) -> list[list]:
    """Contiguous, near-equal parts of `items` (Kaldi's split_scp), none empty: what job
    j of `nj` handles is `split(items, nj)[j - 1]` (fewer parts when there are fewer items)."""
    nj = max(1, min(nj, len(items)))
    bounds = [round(i * len(items) / nj) for i in range(nj + 1)]
    return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


JOB_OPTIONS = ("--cmd", "--log-dir")  # what add_job_options adds; not passed on to the jobs


def add_job_options(parser: argparse.ArgumentParser, name: str) -> None:
    """--cmd and --log-dir of a tool that splits its work into --nj jobs (--job J)."""
    parser.add_argument(
        "--cmd", default="",
        help="job dispatcher command line (cmd.sh's $train_cmd, e.g. 'dispatch.sh slurm --mem "
        "2G'): run the --nj jobs (--job J) through it, then merge here; empty: all in this "
        "process",
    )  # fmt: skip
    parser.add_argument(
        "--log-dir",
        default="",
        help=f"the jobs' logs <log-dir>/{name}.JOB.log (default: <out>/log)",
    )


def without_options(argv: Sequence[str], names: Sequence[str]) -> list[str]:
    """`argv` less the options `names` (`--opt value` or `--opt=value`)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not any(arg.startswith(f"{n}=") for n in names):
            out.append(arg)
    return out


def run_jobs(
    cmd: str, nj: int, log: str, module: str, argv: Sequence[str],
    job: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    """`python -m <module> <argv> --job JOB` for JOB = 1..nj through the dispatcher command
    line `cmd` (cmd.sh's $train_cmd, e.g. `dispatch.sh slurm --mem 2G`), each logging to
    `log` (a path with JOB); ApmError when any failed, naming them.

    With the local backend and `job` (the calling tool's own job function, run(J) doing what
    that command line does) each task is a fork of this process instead of a new Python:
    the same tasks, logs (headed by that command line), limits and failure report, without
    importing torch and lhotse again per job."""
    words = shlex.split(cmd)
    if not words:
        raise ApmError("--cmd is empty: give a dispatcher, e.g. 'dispatch.sh local'")
    command = [sys.executable, "-m", module, *argv, "--job", "JOB"]
    if (
        job is not None
        and len(words) > 1
        and Path(words[0]).name == "dispatch.sh"
        and words[1] == "local"
    ):
        backend, spec = parse_args([*words[1:], f"JOB=1:{nj}", log, *command])
        report(backend, spec, run_local(spec, forked=job))
        return
    try:
        done = subprocess.run([*words, f"JOB=1:{nj}", log, *command])
    except OSError as e:
        raise ApmError(f"--cmd '{cmd}': cannot run {words[0]} ({e.strerror}); is utils/ on "
                       "PATH (path.sh)?") from None  # fmt: skip
    if done.returncode != 0:
        raise ApmError(
            f"{module}: its jobs failed (the failed ones and their logs are listed above); "
            "fix the cause and rerun: finished jobs are kept"
        )


# -- running one task (every backend) ------------------------------------------------------


def _header(spec: Spec, task: int) -> str:
    where = socket.gethostname()
    sched = ""
    if "SLURM_JOB_ID" in os.environ:
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ["SLURM_JOB_ID"])
        sub = os.environ.get("SLURM_ARRAY_TASK_ID")
        sched = f", Slurm job {job}{'_' + sub if sub else ''}"
    elif "JOB_ID" in os.environ and "SGE_TASK_ID" in os.environ:
        sched = f", SGE job {os.environ['JOB_ID']}.{os.environ['SGE_TASK_ID']}"
    return (
        f"# {spec.shell_command(task)}\n"
        f"# Started at {time.strftime('%a %b %d %H:%M:%S %Z %Y')} on {where}{sched}\n"
    )


def _trailer(code: int, elapsed: float) -> str:
    return (
        f"# Ended (code {code}) at {time.strftime('%a %b %d %H:%M:%S %Z %Y')}, "
        f"elapsed time {elapsed:.0f} seconds\n"
    )


def _task_env(spec: Spec) -> dict[str, str]:
    env = dict(os.environ)
    if spec.num_threads > 1 and "APM_CORES" not in env:
        env["APM_CORES"] = str(spec.num_threads)  # the tools' torch threads
    return env


def _write_rc(spec: Spec, task: int, code: int) -> None:
    path = spec.rc_path(task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(f"{code}\n")
    os.replace(tmp, path)


def run_task(spec: Spec, task: int) -> int:
    """Run one task in this process's place (what a scheduler's array task does): its log
    framed, its exit code recorded in `q/<name>.<task>.rc`. A SIGTERM (scancel, a time
    limit) is passed on to the command and noted in the log."""
    log = spec.log_path(task)
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "w", encoding="utf-8") as out:
        out.write(_header(spec, task))
        out.flush()
        child = subprocess.Popen(
            ["bash", "-c", spec.shell_command(task)], cwd=spec.cwd, stdout=out,
            stderr=subprocess.STDOUT, env=_task_env(spec), start_new_session=True,
        )  # fmt: skip

        def forward(signum: int, _frame: object) -> None:
            out.write(f"# Received signal {signum} from the scheduler; stopping the command\n")
            out.flush()
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        code = child.wait()
        code = 128 - code if code < 0 else code
        out.write(_trailer(code, time.time() - start))
    _write_rc(spec, task, code)
    return code


# -- backends -------------------------------------------------------------------------------


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class _Fork:
    """A task run as a fork of this process: `fn(task)` with stdout and stderr on `out`;
    exit status 0, or 1 after an error (an ApmError as the CLIs print it)."""

    def __init__(self, fn: Callable[[int], None], task: int, out: IO[str]) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:  # the child
            code = 1
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(out.fileno(), 2)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                fn(task)
                code = 0
            except ApmError as e:
                logging.getLogger("dispatch").error("%s", e)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except BaseException:  # noqa: BLE001 (reported in the task's log)
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                logging.shutdown()
                os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def run_local(spec: Spec, forked: Callable[[int], None] | None = None) -> dict[int, int | None]:
    """Every task as a child process, at most --max-jobs-run (default: cores / threads) at
    once; {task: exit code}. One task alone also writes its output to the console.
    `forked`: each task is a fork running forked(task) instead of the command (run_jobs)."""
    limit = spec.max_jobs_run or max(1, cores() // max(spec.num_threads, 1))
    pending, running, codes = list(reversed(spec.tasks)), {}, {}
    tee = len(spec.tasks) == 1 and forked is None
    while pending or running:
        while pending and len(running) < limit:
            task = pending.pop()
            if forked is None:
                running[task] = _start_local(spec, task, tee)
            else:
                out = _open_log(spec, task)
                running[task] = (_Fork(forked, task, out), out, time.time(), None)
        time.sleep(0.05)
        for task, (child, out, start, pump) in list(running.items()):
            if child.poll() is None:
                continue
            if pump is not None:
                pump.join()
            code = 128 - child.returncode if child.returncode < 0 else child.returncode
            out.write(_trailer(code, time.time() - start))
            out.close()
            _write_rc(spec, task, code)
            codes[task] = code
            del running[task]
    return codes


def _open_log(spec: Spec, task: int) -> IO[str]:
    log = spec.log_path(task)
    log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "w", encoding="utf-8")  # noqa: SIM115 (closed when the task ends)
    out.write(_header(spec, task))
    out.flush()
    return out


def _start_local(spec: Spec, task: int, tee: bool):
    out = _open_log(spec, task)
    cmd = ["bash", "-c", spec.shell_command(task)]
    if not tee:
        child = subprocess.Popen(cmd, cwd=spec.cwd, stdout=out, stderr=subprocess.STDOUT,
                                 env=_task_env(spec))  # fmt: skip
        return child, out, time.time(), None
    # one task: its output to the log and the console (stderr), line by line
    child = subprocess.Popen(cmd, cwd=spec.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=_task_env(spec))  # fmt: skip

    def copy() -> None:
        for line in iter(child.stdout.readline, b""):
            out.write(line.decode("utf-8", errors="replace"))
            out.flush()
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        child.stdout.close()

    pump = threading.Thread(target=copy, daemon=True)
    pump.start()
    return child, out, time.time(), pump


def _write_submission(spec: Spec, task_var: str) -> Path:
    """`q/<name>.json` (the spec) and `q/<name>.sh` (runs one task of it); returns the script."""
    q = spec.queue_dir
    q.mkdir(parents=True, exist_ok=True)
    spec_file = q / f"{spec.name}.json"
    spec_file.write_text(json.dumps(asdict(spec), indent=1) + "\n")
    script = q / f"{spec.name}.sh"
    root = str(Path(__file__).resolve().parents[2])
    task = f'"${{{task_var}:-1}}"' if spec.var is not None else "1"
    script.write_text(
        "#!/usr/bin/env bash\n"
        f"# written by apm.utils.dispatch: runs one task of {spec_file.name}\n"
        f"export PYTHONPATH={shlex.quote(root)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
        f"exec {shlex.quote(sys.executable)} -m apm.utils.dispatch task "
        f"{shlex.quote(str(spec_file))} {task}\n"
    )
    script.chmod(0o755)
    return script


def sbatch_command(spec: Spec, script: Path) -> list[str]:
    """The `sbatch --wait` command line of `spec` (an array job when it has a range)."""
    cmd = ["sbatch", "--wait", "--parsable", f"--job-name={spec.name}", "--export=ALL",
           f"--chdir={spec.cwd}"]  # fmt: skip
    out = (
        spec.queue_dir / f"{spec.name}.%a.out" if spec.var else spec.queue_dir / f"{spec.name}.out"
    )
    cmd.append(f"--output={out}")
    if spec.var is not None:
        limit = f"%{spec.max_jobs_run}" if spec.max_jobs_run else ""
        cmd.append(f"--array={spec.first}-{spec.last}{limit}")
    if spec.num_threads > 1:
        cmd.append(f"--cpus-per-task={spec.num_threads}")
    if spec.mem:
        cmd.append(f"--mem={spec.mem}")
    if spec.gpu > 0:
        cmd.append(f"--gres=gpu:{spec.gpu}")
    if spec.time:
        cmd.append(f"--time={spec.time}")
    if spec.num_nodes > 1:
        cmd += [f"--nodes={spec.num_nodes}", "--ntasks-per-node=1"]
    cmd += shlex.split(spec.queue_opts)
    return [*cmd, str(script)]


def qsub_command(spec: Spec, script: Path) -> list[str]:
    """The `qsub -sync y` command line of `spec` (an array job `-t` when it has a range)."""
    out = spec.queue_dir / (f"{spec.name}.$TASK_ID.out" if spec.var else f"{spec.name}.out")
    cmd = ["qsub", "-sync", "y", "-V", "-cwd", "-j", "y", "-N", spec.name, "-o", str(out),
           "-S", "/bin/bash"]  # fmt: skip
    if spec.var is not None:
        cmd += ["-t", f"{spec.first}-{spec.last}"]
        if spec.max_jobs_run:
            cmd += ["-tc", str(spec.max_jobs_run)]
    if spec.num_threads > 1:
        cmd += ["-pe", "smp", str(spec.num_threads)]
    if spec.mem:
        cmd += ["-l", f"mem_free={spec.mem},ram_free={spec.mem}"]
    if spec.gpu > 0:
        cmd += ["-l", f"gpu={spec.gpu}"]
    if spec.time:
        cmd += ["-l", f"h_rt={spec.time}"]
    if spec.num_nodes > 1:
        raise ApmError("sge: --num-nodes > 1 is not supported (use a parallel environment "
                       "in --queue-opts, e.g. '-pe mpi 2')")  # fmt: skip
    cmd += shlex.split(spec.queue_opts)
    return [*cmd, str(script)]


def run_scheduler(spec: Spec, backend: str) -> dict[int, int | None]:
    """Submit the tasks as one array job and wait; {task: exit code, None if it did not
    finish (killed, cancelled, never ran)}."""
    tool = "sbatch" if backend == "slurm" else "qsub"
    if shutil.which(tool) is None:
        raise ApmError(f"{backend}: {tool} not found on PATH; is this a {backend} submit host? "
                       "(cmd_backend=local in cmd.sh runs the jobs on this machine)")  # fmt: skip
    for task in spec.tasks:
        spec.rc_path(task).unlink(missing_ok=True)
    script = _write_submission(spec, "SLURM_ARRAY_TASK_ID" if backend == "slurm" else "SGE_TASK_ID")
    cmd = sbatch_command(spec, script) if backend == "slurm" else qsub_command(spec, script)
    with open(spec.queue_dir / f"{spec.name}.submit.log", "w", encoding="utf-8") as note:
        note.write(shlex.join(cmd) + "\n")
        note.flush()
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        note.write(done.stdout)
    ids = done.stdout.strip().splitlines()[:1]
    if done.returncode != 0 and not any(spec.rc_path(t).exists() for t in spec.tasks):
        if not ids or not ids[0].split(";")[0].isdigit():
            raise ApmError(f"{backend}: {tool} failed (exit {done.returncode}): "
                           f"{done.stdout.strip()[-2000:]}\n  command: {shlex.join(cmd)}")  # fmt: skip
    codes: dict[int, int | None] = {}
    for task in spec.tasks:
        rc = spec.rc_path(task)
        codes[task] = int(rc.read_text()) if rc.exists() else None
    return codes


def dispatch(backend: str, spec: Spec) -> None:
    """Run every task of `spec` on `backend`; ApmError naming each failed task and its log."""
    report(backend, spec, run_local(spec) if backend == "local" else run_scheduler(spec, backend))


def report(backend: str, spec: Spec, codes: Mapping[int, int | None]) -> None:
    """ApmError naming each failed task (exit code, or not finished) with its log and its
    last lines; nothing when all succeeded."""
    failed = {t: c for t, c in codes.items() if c != 0}
    if not failed:
        return
    lines = [f"{backend}: {len(failed)} of {len(codes)} jobs failed:"]
    for task, code in failed.items():
        what = (
            f"exit code {code}"
            if code is not None
            else "did not finish (killed by the scheduler, or never ran)"
        )
        label = f"{spec.var}={task}" if spec.var else "the job"
        lines.append(f"  {label}: {what}; log: {spec.log_path(task)}")
        if code is None and backend != "local":
            lines.append(f"    scheduler output: {spec.queue_dir}/")
        lines += [f"    {line}" for line in _tail(spec.log_path(task))]
    lines.append("  A rerun redoes the failed jobs only; finished ones are kept.")
    raise ApmError("\n".join(lines))


def _tail(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ["(no log written)"]
    return [ln for ln in text.splitlines() if ln.strip()][-TAIL_LINES:]


# -- torchrun under Slurm --------------------------------------------------------------------


def expand_hostlist(hostlist: str) -> list[str]:
    """Slurm's compressed host list (`node[01-03,7],gpu5`) as host names."""
    hosts, depth, start = [], 0, 0
    parts = []
    for i, ch in enumerate(hostlist + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(hostlist[start:i])
            start = i + 1
    for part in filter(None, parts):
        m = re.match(r"^(.*?)\[([^\]]+)\](.*)$", part)
        if not m:
            hosts.append(part)
            continue
        prefix, ranges, suffix = m.groups()
        for item in ranges.split(","):
            lo, _, hi = item.partition("-")
            for n in range(int(lo), int(hi or lo) + 1):
                hosts.extend(expand_hostlist(f"{prefix}{n:0{len(lo)}d}{suffix}"))
    return hosts


def torchrun_command(
    nproc_per_node: int, env: Mapping[str, str], port: int | None = None
) -> list[str]:
    """The launcher to put before `<module> <args>` of a distributed run with
    `nproc_per_node` processes per node. Inside a Slurm allocation (SLURM_JOB_ID): `srun`
    one torchrun per node of the allocation, rendezvous (c10d) on its first node at `port`
    (default: 20000 + job id mod 20000, so jobs sharing a node do not collide), the job id
    as rendezvous id; elsewhere one standalone torchrun on this machine."""
    run = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc_per_node}"]
    if "SLURM_JOB_ID" not in env:
        return [*run, "--standalone", "--nnodes=1", "-m"]
    nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
    hosts = expand_hostlist(env.get("SLURM_JOB_NODELIST", env.get("SLURM_NODELIST", "")))
    if not hosts:
        raise ApmError("inside a Slurm job but SLURM_JOB_NODELIST is empty: cannot place "
                       "the rendezvous; run the training through $cuda_cmd (sbatch)")  # fmt: skip
    if port is None:
        port = 20000 + int(env["SLURM_JOB_ID"]) % 20000
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
            "--kill-on-bad-exit=1"]  # fmt: skip
    return [*srun, *run, f"--nnodes={nodes}", "--rdzv_backend=c10d",
            f"--rdzv_endpoint={hosts[0]}:{port}", f"--rdzv_id={env['SLURM_JOB_ID']}", "-m"]  # fmt: skip


# -- command line ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["task"] and len(argv) == 3:
            spec = Spec(**json.loads(Path(argv[1]).read_text()))
            return run_task(spec, int(argv[2]))
        if argv[:1] == ["torchrun"]:
            if len(argv) != 3 or argv[1] != "--nproc-per-node" or not argv[2].isdigit():
                raise ApmError("usage: python -m apm.utils.dispatch torchrun --nproc-per-node G")
            print("\n".join(torchrun_command(int(argv[2]), os.environ)))
            return 0
        if argv[:1] in (["-h"], ["--help"]):
            print(__doc__.strip())
            return 0
        backend, spec = parse_args(argv)
        dispatch(backend, spec)
    except ApmError as e:
        print(f"dispatch.sh: ERROR: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
