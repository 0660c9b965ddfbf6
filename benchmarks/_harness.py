"""Shared machinery of the benchmark suite: subprocess runner, timing, tables, chart.

Data flow (one case = one fresh interpreter, so upstream and ours never share a
process, a global coordinator, a Caffe2 workspace or an atexit hook)::

    run.py (parent; never imports Caffe2)
      |  Case -> spec.json
      v
    python -m benchmarks._child spec.json result.json       (fresh process group)
      |  GlobalInit, import the side's data_workers module,
      |  run <workload>.measure(ctx): build net -> start() -> RunNet loop -> stop()
      v
    result.json -> parent: tables on stdout, <out>/benchmarks.json, <out>/benchmarks.png

Top-level imports stay light (stdlib + numpy): worker processes started with the
"spawn" method import the workload modules to unpickle their fetchers, and with them
this module. Caffe2 and matplotlib are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UPSTREAM_MODULE = "caffe2.python.data_workers"
OURS_MODULE = "data_workers"

# Keyword arguments that only our init_data_input_workers accepts.
OURS_ONLY_KWARGS = ("worker_type", "deterministic", "seed")

UPSTREAM = "upstream"
OURS = "ours"

Result = Dict[str, Any]


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class Timing:
    """How long a steady-state measurement runs.

    Attributes:
        warmup_s: seconds of batches consumed and thrown away first.
        window_s: length of one measurement window.
        windows: number of windows; the reported rate is their median.
    """

    warmup_s: float
    window_s: float
    windows: int


FULL_TIMING = Timing(warmup_s=1.5, window_s=0.5, windows=7)
QUICK_TIMING = Timing(warmup_s=0.4, window_s=0.25, windows=3)


@dataclasses.dataclass(frozen=True)
class Case:
    """One measurement, run in its own interpreter.

    Attributes:
        workload: module name under ``benchmarks/`` (``"small_chunks"``, ...).
        side: ``"upstream"`` or ``"ours"``.
        label: configuration shown in tables, e.g. ``"2 threads"``.
        params: JSON-able parameters read by the workload's ``measure``.
        timeout_s: the child is killed (whole process group) after this long.
    """

    workload: str
    side: str
    label: str
    params: Mapping[str, Any]
    timeout_s: float

    @property
    def config_key(self) -> str:
        return f"{self.workload}/{self.side}/{self.label}"

    @property
    def key(self) -> str:
        repeat = self.params.get("repeat")
        return self.config_key + ("" if repeat is None else f"#{repeat}")


# --------------------------------------------------------------------------- parent


def upstream_vs_ours_cases(workload: str, quick: bool, timing: "Timing",
                           timeout_s: float) -> List["Case"]:
    """Upstream with 2 threads, ours with 2 threads, and (full runs) ours with 2 processes."""
    base = {"timing": timing.__dict__}
    cases = [
        Case(workload, UPSTREAM, "2 threads", dict(base, dw_kwargs={}), timeout_s),
        Case(workload, OURS, "2 threads", dict(base, dw_kwargs={"worker_type": "thread"}),
             timeout_s),
    ]
    if not quick:
        cases.append(Case(workload, OURS, "2 processes",
                          dict(base, dw_kwargs={"worker_type": "process"}), timeout_s))
    return cases


def _kill_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, the process group of a child we started."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 0.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _shm_names() -> set:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def log_tail(path: str, limit: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _busy_cpu_s() -> Optional[float]:
    """CPU seconds all processes of the machine have used (from /proc/stat)."""
    try:
        import psutil
    except ImportError:
        return None
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0) \
        + getattr(t, "steal", 0.0)


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def foreign_load(seconds: float = 0.5) -> Optional[float]:
    """Fraction of the machine's CPUs busy with other programs over ``seconds``."""
    b0, c0, s0 = _busy_cpu_s(), _children_cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    time.sleep(seconds)
    b1, c1, s1 = _busy_cpu_s(), _children_cpu_s(), resource.getrusage(resource.RUSAGE_SELF)
    if b0 is None or b1 is None:
        return None
    own = (c1 - c0) + (s1.ru_utime - s0.ru_utime) + (s1.ru_stime - s0.ru_stime)
    return max(0.0, (b1 - b0 - own) / ((time.monotonic() - t0) * (os.cpu_count() or 1)))


def wait_quiet(max_wait_s: float, threshold: float = 0.15) -> Optional[float]:
    """Wait (at most ``max_wait_s``) until other programs use < ``threshold`` of the
    CPUs; returns the last load seen. Benchmarks on a shared 2-core machine are
    meaningless while a test suite runs beside them."""
    deadline = time.monotonic() + max_wait_s
    load = foreign_load(0.3)
    while load is not None and load > threshold and time.monotonic() < deadline:
        load = foreign_load(1.0)
    return load


def run_isolated(args: Sequence[str], *, log_path: str, timeout_s: float,
                 env: Optional[Mapping[str, str]] = None) -> Tuple[subprocess.Popen[bytes], bool]:
    """Run ``python ARGS`` from the repository root in its own session, output to a log.

    On timeout, or when the runner itself is interrupted, the child's whole process
    group (its worker processes included) is terminated, then killed.

    Args:
        args: arguments after the interpreter, e.g. ``["-m", "benchmarks._child", ...]``.
        log_path: file that receives the child's stdout and stderr.
        timeout_s: wall-clock limit.
        env: the child's environment (default: ours, with the repository first on
            ``PYTHONPATH``).

    Returns:
        The finished process (``returncode`` set; members of its process group may
        outlive it, see ``reap_leftovers``) and whether it was killed for the timeout.
    """
    if env is None:
        env = child_env()
    timed_out = False
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc.pid)
            proc.wait()
        except BaseException:  # Ctrl-C / SIGTERM of the runner: take the case down too
            _kill_group(proc.pid)
            raise
    return proc, timed_out


def reap_leftovers(pgid: int) -> bool:
    """After a child exited: True if something it started outlived it (a worker
    process that stop() did not reap); that something is given a moment, then killed."""
    if not _group_alive(pgid):
        return False
    time.sleep(1.0)
    if not _group_alive(pgid):
        return False
    _kill_group(pgid)
    return True


def child_env() -> Dict[str, str]:
    """Our environment with the repository first on ``PYTHONPATH``, output unbuffered."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_case(case: Case, *, ours_module: str, workdir: str, index: int) -> Result:
    """Run one case in a fresh interpreter and return its result record.

    The child runs in its own session so that the whole group (its worker
    processes included) can be killed on timeout, and so that processes left
    behind after it exits can be noticed (``leaked_processes``).

    Args:
        case: what to run.
        ours_module: module imported for the ``"ours"`` side.
        workdir: scratch directory for the spec, result and log files.
        index: sequence number, used to name those files.

    Returns:
        The child's result dict plus ``key``, ``workload``, ``side``, ``label``,
        ``wall_s``, and ``error`` (with a log tail) when it failed.
    """
    stem = os.path.join(workdir, f"{index:03d}_{case.workload}_{case.side}")
    spec_path, out_path, log_path = stem + ".spec.json", stem + ".out.json", stem + ".log"
    spec = {
        "workload": case.workload,
        "side": case.side,
        "label": case.label,
        "params": dict(case.params),
        "module": UPSTREAM_MODULE if case.side == UPSTREAM else ours_module,
    }
    with open(spec_path, "w") as f:
        json.dump(spec, f)
    shm_before = _shm_names()
    busy0, kids0 = _busy_cpu_s(), _children_cpu_s()
    t0 = time.perf_counter()
    proc, timed_out = run_isolated(["-m", "benchmarks._child", spec_path, out_path],
                                   log_path=log_path, timeout_s=case.timeout_s)
    rc: Optional[int] = proc.returncode
    wall = time.perf_counter() - t0
    busy1, kids1 = _busy_cpu_s(), _children_cpu_s()
    foreign = None
    if busy0 is not None and busy1 is not None:
        # CPU the machine spent outside this case's process tree, as a fraction
        # of all CPUs over the case's wall time (the parent only waits).
        foreign = max(0.0, (busy1 - busy0 - (kids1 - kids0)) / (wall * (os.cpu_count() or 1)))

    leaked = not timed_out and reap_leftovers(proc.pid)

    result: Result = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            result = json.load(f)
    result.update(
        key=case.key,
        config_key=case.config_key,
        workload=case.workload,
        side=case.side,
        label=case.label,
        params=dict(case.params),
        wall_s=wall,
        returncode=rc,
        foreign_load=foreign,
    )
    if leaked:
        result["leaked_processes"] = True
    new_shm = sorted(_shm_names() - shm_before)
    if new_shm:
        # Another program may have created these meanwhile; reported, not removed.
        result["new_dev_shm_entries"] = new_shm[:20]
    if timed_out:
        result["timed_out"] = True
        if "batches_per_s" not in result and "first_batch_s" not in result:
            result.setdefault("error", f"timed out after {case.timeout_s:.0f} s")
        else:
            result.setdefault("warning", f"hung after measuring; killed at {case.timeout_s:.0f} s")
    elif rc != 0 and "error" not in result:
        if result.get("complete"):
            result["warning"] = f"child exited with status {rc} after measuring"
        else:
            result["error"] = f"child exited with status {rc}"
    if "error" in result or "warning" in result:
        result["log_tail"] = log_tail(log_path)
    return result


def machine_info(ours_module: str) -> Result:
    """What ran the benchmarks (no Caffe2 import)."""
    info: Result = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "ours_module": ours_module,
        "upstream_module": UPSTREAM_MODULE,
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if "." not in ours_module:
        # Ties the figures to the code measured (there may be no commit yet).
        import hashlib
        import importlib.util

        spec = importlib.util.find_spec(ours_module)  # locates, does not import
        if spec is not None and spec.submodule_search_locations:
            root = list(spec.submodule_search_locations)[0]
            digest = hashlib.sha1()
            for name in sorted(os.listdir(root)):
                if name.endswith(".py"):
                    with open(os.path.join(root, name), "rb") as f:
                        digest.update(name.encode() + b"\0" + f.read())
            info["ours_source_sha1"] = digest.hexdigest()[:12]
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- child


class ChildContext:
    """What a workload's ``measure`` gets inside the child process.

    Attributes:
        side: ``"upstream"`` or ``"ours"``.
        label: the case's configuration label.
        params: the case's parameters.
        dw: the imported data_workers module of this side.
        notes: remarks that end up in the result (e.g. dropped keyword arguments).
    """

    def __init__(self, spec: Mapping[str, Any], dw: Any, out_path: str) -> None:
        self.side: str = spec["side"]
        self.label: str = spec["label"]
        self.workload: str = spec["workload"]
        self.params: Dict[str, Any] = dict(spec["params"])
        self.dw = dw
        self.notes: List[str] = []
        self._out_path = out_path
        self.timing = Timing(**self.params["timing"])

    @property
    def dw_is_upstream(self) -> bool:
        return self.dw.__name__ == UPSTREAM_MODULE

    def init_kwargs(self, kwargs: Mapping[str, Any]) -> Dict[str, Any]:
        """Keyword arguments for init_data_input_workers, minus ours-only extras
        when this side's module is upstream's."""
        out = dict(kwargs)
        if self.dw_is_upstream:
            dropped = [k for k in OURS_ONLY_KWARGS if k in out]
            for k in dropped:
                del out[k]
            if dropped and self.side == OURS:
                self.notes.append(
                    "ours points at upstream (dev mode): dropped " + ", ".join(dropped)
                )
        return out

    def checkpoint(self, result: Result) -> None:
        """Write the result so far; the parent keeps it even if stop() then hangs."""
        write_json(self._out_path, dict(result, notes=list(self.notes)))


def write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def caffe2_init() -> None:
    from caffe2.python import workspace

    workspace.GlobalInit(["caffe2", "--caffe2_log_level=3"])


class Consumer:
    """Runs the net (DequeueBlobs ops only) from Python, like a training loop."""

    def __init__(self, net_name: str) -> None:
        from caffe2.python import workspace

        self._workspace = workspace
        self.net_name = net_name

    def run(self, iterations: int = 1) -> None:
        # RunNet(name, num_iter) loops in C++ with the GIL released; `iterations`
        # is kept small (a few ms of work) so windows end on time.
        self._workspace.RunNet(self.net_name, iterations)

    def fetch(self, blob: str) -> np.ndarray:
        return self._workspace.FetchBlob(blob)


def run_pipeline(
    ctx: ChildContext,
    *,
    blobs: Sequence[str],
    fetch_fun: Callable[[int, int], Any],
    batch_size: int,
    num_workers: int,
    measure: Callable[[Consumer, float], Result],
    extra_kwargs: Optional[Mapping[str, Any]] = None,
) -> Result:
    """Build a net fed by ``ctx.dw``, start the workers, measure, stop.

    Args:
        ctx: the child's context.
        blobs: input blob names.
        fetch_fun: the fetcher.
        batch_size: rows per batch.
        num_workers: ``num_worker_threads``.
        measure: called as ``measure(consumer, t_start)`` right after ``start()``
            returns; ``t_start`` is ``perf_counter()`` just before ``start()``.
        extra_kwargs: keyword arguments for this workload, on top of the case's own
            (``params["dw_kwargs"]``) and its dequeue ``timeout``
            (``params["dequeue_timeout"]``, default 30 s).  Ours-only ones are
            dropped for upstream.

    Returns:
        ``measure``'s dict plus ``start_call_s``, ``stop_s``, ``stop_ok``,
        ``batch_shapes`` (of the last batch) and ``stop_error`` if stop() raised.
    """
    from caffe2.python import core, workspace

    net = core.Net(f"bench_{ctx.workload}_{ctx.side}")
    kwargs = ctx.init_kwargs(dict(ctx.params["dw_kwargs"],
                                  timeout=ctx.params.get("dequeue_timeout", 30),
                                  **(extra_kwargs or {})))
    coord = ctx.dw.init_data_input_workers(
        net,
        list(blobs),
        fetch_fun,
        batch_size,
        num_worker_threads=num_workers,
        input_source_name=f"bench_{ctx.workload}",
        **kwargs,
    )
    workspace.CreateNet(net)
    consumer = Consumer(net.Proto().name)
    result: Result = {"dw_kwargs": kwargs}
    measured = False
    try:
        t_start = time.perf_counter()
        coord.start()
        result["start_call_s"] = time.perf_counter() - t_start
        result.update(measure(consumer, t_start))
        result["batch_shapes"] = {b: list(consumer.fetch(b).shape) for b in blobs}
        measured = True
        result["complete"] = True
        ctx.checkpoint(result)
    finally:
        t_stop = time.perf_counter()
        try:
            result["stop_ok"] = bool(coord.stop())
        except Exception as e:  # reported, not hidden; re-raised if nothing was measured
            result["stop_error"] = f"{type(e).__name__}: {e}"
            if not measured:
                raise
        result["stop_s"] = time.perf_counter() - t_stop
    return result


def measure_steady(
    consumer: Consumer,
    timing: Timing,
    call_s: float = 0.004,
    after_window: Optional[Callable[[], Any]] = None,
    rewarm_s: float = 0.2,
) -> Result:
    """Steady-state batches/s: warm up, then the median of ``timing.windows`` windows.

    Each ``RunNet`` call runs ``step`` iterations, ``step`` chosen from the
    rate seen so far so that one call lasts about ``call_s``.

    Args:
        consumer: runs the net.
        timing: warm-up and windows.
        call_s: target duration of one ``RunNet`` call.
        after_window: called after every window while the consumer pauses (e.g. a
            memcpy measurement taken under the same machine conditions); its
            results are returned in ``after_window``. Consumption then resumes
            unmeasured for ``rewarm_s`` (and at least 16 batches) so that the
            batches buffered during the pause do not inflate the next window.
        rewarm_s: see ``after_window``.

    Returns:
        ``batches_per_s`` (median), ``window_rates``, ``measured_batches``,
        ``warmup_batches`` and, with ``after_window``, its results.
    """
    perf = time.perf_counter

    def run_for(seconds: float, min_batches: int, step: int) -> tuple:
        n = 0
        t0 = perf()
        while True:
            consumer.run(step)
            n += step
            el = perf() - t0
            if el >= seconds and n >= min_batches:
                return n, el
            step = max(1, min(256, int(n / el * call_s)))

    done, _ = run_for(timing.warmup_s, 1, 1)
    step = 1
    rates: List[float] = []
    extras: List[Any] = []
    total = 0
    cpu_s = 0.0
    faults = 0
    threads0 = thread_stats()
    for _ in range(timing.windows):
        c0 = time.process_time()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        n, el = run_for(timing.window_s, 1, step)
        cpu_s += time.process_time() - c0
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        rates.append(n / el)
        total += n
        step = max(1, min(256, int(n / el * call_s)))
        if after_window is not None:
            extras.append(after_window())
            run_for(rewarm_s, 16, step)
    threads1 = thread_stats()
    out: Result = {
        "batches_per_s": statistics.median(rates),
        "window_rates": rates,
        "measured_batches": total,
        "warmup_batches": done,
        # CPU time of the whole trainer process (all its threads, not worker
        # processes) per batch: the pipeline's overhead where the net runs.
        "trainer_cpu_us_per_batch": cpu_s / total * 1e6 if total else None,
        # Page faults in the trainer per batch: ~bytes/4096 means every batch
        # lands in freshly mapped memory (first-touch cost on top of the copy).
        "minor_faults_per_batch": faults / total if total else None,
    }
    if total and after_window is None:
        # Per trainer thread (threads alive at both ends of the windows), CPU per
        # batch: which stage costs what. Not with after_window (pauses in between).
        both = [name for name in sorted(threads1) if name in threads0]

        def per_batch(key: str, scale: float) -> Dict[str, float]:
            return {n: (threads1[n][key] - threads0[n][key]) / total * scale for n in both}

        out["thread_cpu_us_per_batch"] = per_batch("cpu", 1e6)
        out["thread_sys_us_per_batch"] = per_batch("sys", 1e6)
        out["thread_wakeups_per_batch"] = per_batch("wakeups", 1.0)
    if after_window is not None:
        out["after_window"] = extras
    return out


def thread_stats() -> Dict[str, Dict[str, float]]:
    """Per live Python thread of this process, by name: ``cpu`` seconds on the CPU
    (``/proc/self/task/<tid>/schedstat``), ``sys`` seconds in the kernel (``stat``)
    and ``wakeups``, the voluntary context switches so far (``status``: each one a
    sleep on a lock, condition or the GIL, then a wake-up).

    Threads of the same name (numbered fetchers) are summed under the name with
    digits replaced by ``N``. Empty where /proc is unavailable.
    """
    import re
    import threading

    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    out: Dict[str, Dict[str, float]] = {}
    for t in threading.enumerate():
        tid = getattr(t, "native_id", None)
        if tid is None:
            continue
        base = f"/proc/self/task/{tid}/"
        try:
            with open(base + "schedstat") as f:
                cpu = int(f.read().split()[0]) / 1e9
            with open(base + "stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            sys_s = int(fields[12]) / tick  # stime: field 15 of stat(5)
            with open(base + "status") as f:
                m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", f.read(), re.M)
            wakeups = float(m.group(1)) if m else 0.0
        except (OSError, ValueError, IndexError):
            continue
        rec = out.setdefault(re.sub(r"\d+", "N", t.name), {"cpu": 0.0, "sys": 0.0, "wakeups": 0.0})
        rec["cpu"] += cpu
        rec["sys"] += sys_s
        rec["wakeups"] += wakeups
    return out


def spin(iterations: int) -> int:
    """Pure-Python busy loop; holds the GIL the whole time."""
    acc = 0
    for i in range(iterations):
        acc ^= i
    return acc


def calibrate_spin(target_s: float) -> Dict[str, float]:
    """Iterations of ``spin`` that take ``target_s`` here, uncontended.

    Scales by the *fastest* of several runs: on a shared VM other programs only
    ever make a run slower, so the minimum is the stable estimate (a median
    taken while the machine is busy calibrates far too few iterations). Spins
    ~1 s first: the first milliseconds of a fresh process run at another speed.

    Returns:
        ``spin_iterations``; ``spin_s`` (median) and ``spin_min_s`` of 15 runs.
    """
    t_end = time.perf_counter() + 1.0
    n = 20000
    while time.perf_counter() < t_end:
        spin(n)
    for _ in range(4):
        samples = []
        for _ in range(7):
            t0 = time.perf_counter()
            spin(n)
            samples.append(time.perf_counter() - t0)
        n = max(1000, int(n * target_s / min(samples)))
    samples = []
    for _ in range(15):
        t0 = time.perf_counter()
        spin(n)
        samples.append(time.perf_counter() - t0)
    return {"spin_iterations": n, "spin_s": statistics.median(samples),
            "spin_min_s": min(samples)}


def cpu_probe(iterations: int = 50000, repeats: int = 5) -> float:
    """Nanoseconds per ``spin`` iteration now (median): this VM's CPU speed drifts
    by up to 2x over seconds, so every case records it before and after."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        spin(iterations)
        samples.append((time.perf_counter() - t0) / iterations * 1e9)
    return statistics.median(samples)


def memcpy_bandwidth(
    arrays: Sequence[np.ndarray], seconds: float, windows: int = 1,
    dsts: Optional[List[np.ndarray]] = None,
) -> Result:
    """Single-thread ``np.copyto`` bandwidth for the bytes of ``arrays``.

    Copies every array into a preallocated, already-touched array of the same
    shape and dtype; reports bytes copied per second (each byte read once and
    written once), the median over ``windows`` windows of ``seconds`` each.
    """
    if dsts is None:
        dsts = [np.empty_like(a) for a in arrays]
        for d, s in zip(dsts, arrays):  # first touch outside the clock
            np.copyto(d, s)
    nbytes = sum(a.nbytes for a in arrays)
    perf = time.perf_counter
    rates = []
    for _ in range(windows):
        n = 0
        w0 = perf()
        while True:
            for d, s in zip(dsts, arrays):
                np.copyto(d, s)
            n += 1
            el = perf() - w0
            if el >= seconds and n >= 3:
                break
        rates.append(n * nbytes / el / 1e9)
    return {"memcpy_gb_per_s": statistics.median(rates), "memcpy_window_gb_per_s": rates}


def child_main(spec_path: str, out_path: str) -> int:
    """Body of ``python -m benchmarks._child``; returns the exit status."""
    with open(spec_path) as f:
        spec = json.load(f)
    result: Result = {}
    try:
        t0 = time.perf_counter()
        caffe2_init()
        dw = importlib.import_module(spec["module"])
        result["import_s"] = time.perf_counter() - t0
        result["module"] = dw.__name__
        result["module_file"] = getattr(dw, "__file__", None)
        ctx = ChildContext(spec, dw, out_path)
        workload = importlib.import_module("benchmarks." + spec["workload"])
        result["cpu_ns_per_iter_before"] = cpu_probe()
        result.update(workload.measure(ctx))
        result["cpu_ns_per_iter_after"] = cpu_probe()
        result["notes"] = ctx.notes
        write_json(out_path, result)
        return 0
    except BaseException as e:
        import traceback

        result["error"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()
        write_json(out_path, result)
        return 1


# --------------------------------------------------------------------------- reporting


MERGED_FIELDS = (
    "batches_per_s", "gb_per_s", "memcpy_gb_per_s", "fraction_of_memcpy", "first_batch_s",
    "start_call_s", "stop_s", "import_s", "cpu_ns_per_iter_before", "cpu_ns_per_iter_after",
    "foreign_load", "trainer_cpu_us_per_batch", "minor_faults_per_batch",
)

NOISY_LOAD = 0.15  # other programs using more than this share of the CPUs


def merge_repeats(results: Sequence[Result]) -> List[Result]:
    """One record per configuration: the median over its repeats of each numeric
    field in ``MERGED_FIELDS``; windows of those repeats pooled in ``window_rates``;
    ``error`` only if every repeat failed (else listed in ``repeat_errors``).

    Only repeats measured while other programs used <= NOISY_LOAD of the CPUs
    count, unless there are none (``used_repeats`` says which).
    """
    groups: Dict[str, List[Result]] = {}
    for r in results:
        groups.setdefault(r["config_key"], []).append(r)
    merged = []
    for key, rs in groups.items():
        good = [r for r in rs if "error" not in r]
        # Repeats measured beside busy programs only count when no quiet one exists.
        quiet = [r for r in good if (r.get("foreign_load") or 0.0) <= NOISY_LOAD]
        used = quiet or good
        m: Result = {k: rs[0][k] for k in ("config_key", "workload", "side", "label", "params")}
        m["key"] = key
        m["repeats"] = len(rs)
        m["ok_repeats"] = len(good)
        m["used_repeats"] = [r["params"].get("repeat") for r in used]
        for f in MERGED_FIELDS:
            v = median_of(used, f)
            if v is not None:
                m[f] = v
            per = [r[f] for r in used if isinstance(r.get(f), (int, float))]
            if per and len(rs) > 1:
                m.setdefault("per_repeat", {})[f] = per
        m["window_rates"] = [w for r in used for w in r.get("window_rates", [])]
        for field in ("thread_cpu_us_per_batch", "thread_sys_us_per_batch",
                      "thread_wakeups_per_batch"):
            per_thread = [r[field] for r in used if r.get(field)]
            if per_thread:
                m[field] = {k: statistics.median(p[k] for p in per_thread if k in p)
                            for k in per_thread[0]}
        errors = [r["error"] for r in rs if "error" in r]
        if not good:
            m["error"] = errors[0]
        elif errors:
            m["repeat_errors"] = errors
        notes = sorted({n for r in rs for n in r.get("notes", [])})
        if notes:
            m["notes"] = notes
        merged.append(m)
    return merged


def median_of(results: Iterable[Result], field: str) -> Optional[float]:
    values = [r[field] for r in results if isinstance(r.get(field), (int, float))]
    return statistics.median(values) if values else None


def value(result: Optional[Result], field: str = "batches_per_s") -> Optional[float]:
    """``result[field]`` if the result is usable and the field is a number, else None."""
    if not result or "error" in result:
        return None
    v = result.get(field)
    return float(v) if isinstance(v, (int, float)) else None


def ok(result: Optional[Result], field: str = "batches_per_s") -> bool:
    return value(result, field) is not None


def find(results: Sequence[Result], side: str, label: str) -> Optional[Result]:
    for r in results:
        if r["side"] == side and r["label"] == label:
            return r
    return None


def fmt_num(x: Optional[float], digits: int = 0) -> str:
    if x is None:
        return "-"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def fmt_ratio(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b is None or b == 0:
        return None
    return a / b


def noise_note(results: Iterable[Optional[Result]]) -> str:
    """Short target note when a compared config ran beside other busy programs."""
    loads = [r["foreign_load"] for r in results
             if r and isinstance(r.get("foreign_load"), float)]
    worst = max(loads, default=0.0)
    return f"noisy: other programs used up to {100 * worst:.0f}% CPU" if worst > NOISY_LOAD else ""


def thread_note(r: Optional[Result], top: int = 4) -> str:
    """``ours 2 threads: enqueuer 120, fetcher N 40, MainThread 20 us/batch``."""
    if not r:
        return ""
    per = r.get("thread_cpu_us_per_batch") or {}
    if not per:
        return ""
    sys_ = r.get("thread_sys_us_per_batch") or {}
    wake = r.get("thread_wakeups_per_batch") or {}
    items = sorted(per.items(), key=lambda kv: -kv[1])[:top]
    parts = []
    for k, v in items:
        if v < 0.5:
            continue
        extra = []
        if k in sys_:
            extra.append(f"sys {sys_[k]:,.0f}")
        if k in wake:
            extra.append(f"{wake[k]:.1f} wakeups")
        parts.append(f"{_short_thread(k)} {v:,.0f}" + (f" ({', '.join(extra)})" if extra else ""))
    return (f"{r['side']} {r['label']}: trainer CPU us/batch by thread: " + ", ".join(parts))


def _short_thread(name: str) -> str:
    import re

    low = name.lower()
    for word in ("enqueuer", "fetcher", "receiver", "watchdog"):
        if word in low:
            suffix = name[low.index(word) + len(word):]
            return word + ("s" if re.search(r"\bN\b", suffix) else "")
    return name


def cpu_cell(r: Result) -> str:
    v = r.get("trainer_cpu_us_per_batch")
    return "-" if not isinstance(v, (int, float)) else f"{v:,.0f}"


def load_cell(r: Result) -> str:
    v = r.get("foreign_load")
    return "-" if not isinstance(v, float) else f"{100 * v:.0f}%"


def spread(r: Result) -> str:
    rates = r.get("window_rates") or []
    if not rates:
        return "-"
    return f"{min(rates):,.0f}-{max(rates):,.0f}"


@dataclasses.dataclass
class Target:
    """A target printed next to the results (never asserted).

    Attributes:
        name: what is compared.
        measured: the measured ratio, None when a side failed.
        goal: the ratio to reach.
        note: context printed after the verdict.
    """

    name: str
    measured: Optional[float]
    goal: float
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "N/A"
        return "PASS" if self.measured >= self.goal else "MISS"

    def as_dict(self) -> Result:
        return dict(dataclasses.asdict(self), verdict=self.verdict)


@dataclasses.dataclass
class Summary:
    """What a workload reports: one table, its targets, and data for its chart panel."""

    title: str
    headers: List[str]
    rows: List[List[str]]
    targets: List[Target]
    chart: Result
    notes: List[str] = dataclasses.field(default_factory=list)

    def as_dict(self) -> Result:
        return {
            "title": self.title,
            "headers": self.headers,
            "rows": self.rows,
            "targets": [t.as_dict() for t in self.targets],
            "chart": self.chart,
            "notes": self.notes,
        }


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table; the first two columns left-aligned, the rest right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            out.append(cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def format_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]],
                    right: Optional[Iterable[int]] = None) -> str:
    """Markdown table; columns in ``right`` (default: all but the first two) right-aligned."""
    right_set = set(range(2, len(headers)) if right is None else right)
    align = ["---:" if i in right_set else "---" for i in range(len(headers))]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def targets_table(targets: Sequence[Target]) -> List[List[str]]:
    return [
        [t.name, fmt_ratio(t.measured), f">= {t.goal:g}x", t.verdict, t.note] for t in targets
    ]


CHART_TITLE = "data_workers vs caffe2.python.data_workers (same run)"


def write_chart(panels: Sequence[tuple], path: str, subtitle: str,
                title: str = CHART_TITLE) -> None:
    """One PNG, one panel per workload.

    Args:
        panels: ``(plot_fn, data)`` pairs; ``plot_fn(ax, data)`` draws one panel.
        path: PNG file to write.
        subtitle: printed under the figure title (machine, date).
        title: the figure's title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(panels)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.4 * rows), squeeze=False)
    for ax, (plot_fn, summary) in zip(axes.flat, panels):
        try:
            plot_fn(ax, summary)
        except Exception as e:  # a broken panel must not lose the others
            ax.text(0.5, 0.5, f"no chart: {e}", ha="center", va="center", transform=ax.transAxes)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title + "\n" + subtitle, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SIDE_COLORS = {"upstream": "#9e9e9e", "ours": "#1f77b4", "ours-process": "#ff7f0e"}


def bar_panel(
    ax: Any,
    labels: Sequence[str],
    values: Sequence[Optional[float]],
    colors: Sequence[str],
    title: str,
    ylabel: str,
    fmt: str = "{:,.0f}",
    spans: Optional[Sequence[Optional[Tuple[float, float]]]] = None,
) -> None:
    """Bars labelled with their values; ``spans`` (min, max) per bar draws whiskers
    and adds the range to the label."""
    xs = list(range(len(labels)))
    heights = [v if v is not None else 0.0 for v in values]
    spans = list(spans) if spans is not None else [None] * len(xs)
    bars = ax.bar(xs, heights, color=colors)
    for x, v, span in zip(xs, values, spans):
        if v is not None and span is not None:
            ax.errorbar([x], [v], yerr=[[v - span[0]], [span[1] - v]], fmt="none",
                        ecolor="k", elinewidth=1, capsize=4)
    for b, v, span in zip(bars, values, spans):
        text = "failed" if v is None else fmt.format(v)
        top = b.get_height()
        if v is not None and span is not None:
            text += "\n(" + fmt.format(span[0]) + "-" + fmt.format(span[1]) + ")"
            top = max(top, span[1])
        ax.annotate(text, (b.get_x() + b.get_width() / 2, top),
                    ha="center", va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.margins(y=0.15)
