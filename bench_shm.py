"""bench_shm.py - is shared memory fast? Our channel against a pipe, measured.

The tutorial ends by saying that shared memory is efficient because the
data is not copied through the kernel. This measures how true that is for
the channel that processa and processb use: shmm.Writer and shmm.Reader,
the very code, over a System V segment. In the same run, interleaved, the
same blocks go through os.pipe, and through multiprocessing.shared_memory
with the tutorial's lock-step (one slot, one byte each way per block).

    $ make bench                  # about half a minute; prints a table
    $ python3 bench_shm.py --quick --json

Each run forks a reader, which takes every block out into its own
page-aligned buffer, as a consumer would; the writer's clock stops when the
reader has taken the last one. Every block carries its number in its first
and last 8 bytes, and the reader checks both: a lost, repeated, reordered or
torn block fails the run. Before it is timed, each case also moves a few
blocks with a CRC-32 of every byte on both sides. Results are the medians of
interleaved repeats. The token FIFOs are unnamed pipes here (a FIFO is a
pipe with a name), and the segment is removed as soon as it is attached,
so that nothing can be left behind.

Last, processb.py --raw streams 1 GiB into processa.py --raw, to show that
their peak memory does not grow with what they carry.

README.md ("Performance") has the table of one run and what limits each case.
Companion: shmm.py (Writer, Reader). Man pages: shmget(2), pipe(7).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from multiprocessing import shared_memory
from typing import Callable, NamedTuple  # noqa: UP035 - collections.abc's needs Python 3.9

import shmm

BLOCKS = (64, 4096, 64 * 1024, 1024 * 1024)  # bytes per block, one message each
STAMP = struct.Struct("=Q")                   # a block's number, at both of its ends
RUN_BYTES = 256 << 20                         # bytes per timed run...
RUN_BLOCKS = 20_000                           # ...but no more blocks than this
REPEATS = 5                                   # timed runs per case; we report the median
STREAM_BYTES = 1 << 30                        # through processb --raw | processa --raw

Check = Callable[[memoryview, int], None]     # the reader's test of each block it takes


# --- 1. Blocks ---------------------------------------------------------------------


def aligned_buffer(size: int) -> memoryview:
    """Return size bytes that start on a page boundary, where memcpy runs fastest."""
    return memoryview(mmap.mmap(-1, size))


def stamp(block: memoryview, number: int) -> None:
    """Write the block's number into its first and last 8 bytes."""
    STAMP.pack_into(block, 0, number)
    STAMP.pack_into(block, len(block) - STAMP.size, number)


def check_stamp(block: memoryview, number: int) -> None:
    """Fail unless the block carries this number at both ends."""
    first = STAMP.unpack_from(block, 0)[0]
    last = STAMP.unpack_from(block, len(block) - STAMP.size)[0]
    if first != number or last != number:
        raise RuntimeError(f"block {number} arrived as {first}/{last}: lost or torn")


# --- 2. The transports ----------------------------------------------------------------
#
# Each make_* runs in the parent before the reader is forked. It returns the
# writer's function, write(source, count), which sends count stamped copies
# of source and returns once the reader has taken them all; the reader's,
# read(sink, count, check), which takes each block into sink and checks it;
# and the file descriptors of each side, so that each process can close the
# other's: a pipe shows end of file only when every write end is closed.


class Transport(NamedTuple):
    write: Callable[[memoryview, int], None]
    read: Callable[[memoryview, int, Check], None]
    writer_fds: tuple[int, ...]
    reader_fds: tuple[int, ...]


def make_shm(block: int, slots: int) -> Transport:
    """Our channel: a System V segment, shmm.Writer and shmm.Reader."""
    segment = shmm.Segment.create(shmm.IPC_PRIVATE, shmm.segment_size(slots, block), 0o600)
    memory = segment.attach()
    segment.remove()  # freed when both processes have detached, whatever happens
    slot_size = shmm.write_header(memory, slots, shmm.BYTES)
    notify_r, notify_w = os.pipe()
    ack_r, ack_w = os.pipe()

    def write(source: memoryview, count: int) -> None:
        writer = shmm.Writer(memory, slots, slot_size, notify_w, ack_r)
        for number in range(count):
            stamp(source, number)
            writer.send(source)
        writer.close()  # waits for the last ack
        segment.detach()

    def read(sink: memoryview, count: int, check: Check) -> None:
        reader = shmm.Reader(memory, slots, slot_size, notify_r, ack_w)

        def take(payload: memoryview, _more: int) -> None:
            sink[:] = payload
            check(sink, reader.messages)

        if not reader.receive(take) or reader.messages != count:
            raise RuntimeError(f"{reader.messages} blocks arrived of {count}")

    return Transport(write, read, (notify_w, ack_r), (notify_r, ack_w))


def make_pipe(block: int, _slots: int) -> Transport:
    """os.pipe: write(2) each block, read(2) it into the reader's buffer."""
    data_r, data_w = os.pipe()
    done_r, done_w = os.pipe()

    def write(source: memoryview, count: int) -> None:
        for number in range(count):
            stamp(source, number)
            os.write(data_w, source)  # a blocking pipe takes the whole block
        os.read(done_r, 1)

    def read(sink: memoryview, count: int, check: Check) -> None:
        for number in range(count):
            got = 0
            while got < block:
                got += os.readv(data_r, [sink[got:]])
            check(sink, number)
        os.write(done_w, b".")

    return Transport(write, read, (data_w, done_r), (data_r, done_w))


def make_posix_shm(block: int, _slots: int) -> Transport:
    """multiprocessing.shared_memory in lock-step: one block in the segment,
    one byte on a pipe each way, as the tutorial would do it."""
    segment = shared_memory.SharedMemory(create=True, size=block)
    segment.unlink()  # the mapping stays; the name goes, so nothing is left behind
    notify_r, notify_w = os.pipe()
    ack_r, ack_w = os.pipe()

    def write(source: memoryview, count: int) -> None:
        for number in range(count):
            stamp(source, number)
            segment.buf[:block] = source
            os.write(notify_w, b"!")
            os.read(ack_r, 1)
        segment.close()

    def read(sink: memoryview, count: int, check: Check) -> None:
        for number in range(count):
            os.read(notify_r, 1)
            sink[:] = segment.buf[:block]
            check(sink, number)
            os.write(ack_w, b".")

    return Transport(write, read, (notify_w, ack_r), (notify_r, ack_w))


TRANSPORTS = {"shm": make_shm, "pipe": make_pipe, "posix_shm": make_posix_shm}


def move(transport: str, slots: int, source: memoryview, count: int, check: Check) -> float:
    """Fork a reader, send count stamped copies of source through the
    transport, and return the seconds the writer took."""
    write, read, writer_fds, reader_fds = TRANSPORTS[transport](len(source), slots)
    reader = os.fork()
    if reader == 0:
        status = 1
        try:
            close_all(writer_fds)
            read(aligned_buffer(len(source)), count, check)
            status = 0
        except (RuntimeError, OSError, shmm.Refused) as error:
            print(f"bench_shm: reader of {transport}: {error}", file=sys.stderr)
        finally:
            os._exit(status)  # never return into the parent's loop
    close_all(reader_fds)
    try:
        started = time.perf_counter()
        write(source, count)
        seconds = time.perf_counter() - started
    finally:
        close_all(writer_fds)  # also lets a reader that waits for more see the end
    if os.waitpid(reader, 0)[1] != 0:
        raise SystemExit(f"bench_shm: the reader of {transport} failed")
    return seconds


def close_all(fds: tuple[int, ...]) -> None:
    """Close each file descriptor."""
    for fd in fds:
        os.close(fd)


def verify(transport: str, slots: int, block: int) -> None:
    """Send 16 blocks with a CRC-32 of every byte on both sides; fail if they differ."""
    count = 16
    source = random_block(block)
    sent = 0
    copy = aligned_buffer(block)
    copy[:] = source
    for number in range(count):  # what the writer will send
        stamp(copy, number)
        sent = zlib.crc32(copy, sent)
    crc_r, crc_w = os.pipe()
    received = 0

    def check_every_byte(sink: memoryview, number: int) -> None:
        nonlocal received
        check_stamp(sink, number)
        received = zlib.crc32(sink, received)
        if number == count - 1:
            os.write(crc_w, STAMP.pack(received))

    move(transport, slots, source, count, check_every_byte)
    got = STAMP.unpack(os.read(crc_r, STAMP.size))[0]
    os.close(crc_r)
    os.close(crc_w)
    if got != sent:
        raise SystemExit(f"bench_shm: {transport} {block} B: CRC-32 {got:#x} arrived,"
                         f" {sent:#x} sent")


def random_block(block: int) -> memoryview:
    """Return a page-aligned block of random bytes."""
    source = aligned_buffer(block)
    source[:] = os.urandom(block)
    return source


# --- 3. The cases, measured -------------------------------------------------------


class Case:
    """One thing to measure: a transport, a block size, a number of slots."""

    def __init__(self, transport: str, block: int, slots: int, count: int) -> None:
        self.transport = transport  # "shm", "pipe" or "posix_shm"
        self.block = block          # bytes per block
        self.slots = slots          # slots in the segment (1 for pipe: it has none)
        self.count = count          # blocks per timed run
        self.seconds: list[float] = []

    def __str__(self) -> str:
        return f"{self.transport} {show_size(self.block)}, slots {self.slots}"

    def measure(self) -> None:
        """Time one run and keep its seconds."""
        source = random_block(self.block)
        self.seconds.append(move(self.transport, self.slots, source, self.count, check_stamp))

    def result(self) -> dict:
        """Return this case's numbers, from the median run."""
        seconds = statistics.median(self.seconds)
        return {"transport": self.transport, "block": self.block, "slots": self.slots,
                "gbps": self.block * self.count / seconds / 1e9,
                "msgs_per_s": self.count / seconds}


def show_size(size: int) -> str:
    """Show 65536 as 64 KiB."""
    for unit, name in ((1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit:
            return f"{size // unit} {name}"
    return f"{size} B"


def make_cases(run_bytes: int, run_blocks: int) -> list[Case]:
    """Every transport at every block size: shm with 1 and 16 slots."""
    cases = []
    for block in BLOCKS:
        count = max(16, min(run_bytes // block, run_blocks))
        cases += [Case("pipe", block, 1, count), Case("shm", block, 1, count),
                  Case("shm", block, 16, count), Case("posix_shm", block, 1, count)]
    return cases


def ping_pong_us(round_trips: int) -> float:
    """Time os.pipe ping-pong of 64 bytes each way; return microseconds per round trip."""
    there_r, there_w = os.pipe()
    back_r, back_w = os.pipe()
    ball = bytes(64)
    child = os.fork()
    if child == 0:
        for _ in range(round_trips):
            os.write(back_w, os.read(there_r, 64))
        os._exit(0)
    started = time.perf_counter()
    for _ in range(round_trips):
        os.write(there_w, ball)
        os.read(back_r, 64)
    seconds = time.perf_counter() - started
    os.waitpid(child, 0)
    for fd in (there_r, there_w, back_r, back_w):
        os.close(fd)
    return seconds / round_trips * 1e6


# --- 4. Peak memory of processa and processb ------------------------------------------
#
# ru_maxrss from wait4(2) would not do: Linux carries it across execve(2),
# so a child forked from this (large) process would report our peak. The
# VmHWM line of /proc/PID/status starts afresh with the new program, and
# only grows; we sample it while the stream runs, until the process ends.


def stream_peak_rss(total: int) -> dict:
    """Stream total bytes through processb --raw into processa --raw; return
    each one's peak resident memory in KiB."""
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as ftok_path:
        common = ["--path", ftok_path, "--raw", "-q"]
        reader = subprocess.Popen([sys.executable, f"{here}/processa.py", *common],
                                  stdout=subprocess.DEVNULL)
        writer = subprocess.Popen([sys.executable, f"{here}/processb.py", *common],
                                  stdin=subprocess.PIPE)
        assert writer.stdin is not None
        peaks = {"reader": 0, "writer": 0}
        chunk = bytes(1 << 20)
        for sent in range(total // len(chunk)):
            writer.stdin.write(chunk)
            if sent % 16 == 0:
                sample_peaks(peaks, reader, writer)
        writer.stdin.close()
        while reader.poll() is None or writer.poll() is None:
            sample_peaks(peaks, reader, writer)
            time.sleep(0.01)
    for name, process in (("reader", reader), ("writer", writer)):
        if process.returncode != 0:
            raise SystemExit(f"bench_shm: the {name} exited with {process.returncode}")
    return peaks


def sample_peaks(peaks: dict, reader: subprocess.Popen, writer: subprocess.Popen) -> None:
    """Raise each peak to the process's VmHWM, if it is still running."""
    for name, process in (("reader", reader), ("writer", writer)):
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peaks[name] = max(peaks[name], int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass  # it has ended: its last sample stands


# --- 5. Running it all ------------------------------------------------------------------


def machine() -> dict:
    """Describe the machine the numbers come from."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith(("model name", "Model")):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu": model, "cpus": os.cpu_count(), "arch": platform.machine(),
            "kernel": platform.release(), "python": platform.python_version()}


def progress(text: str) -> None:
    """Show what runs now on one line of stderr (a line each, if it is not a terminal)."""
    sys.stderr.write(f"\r\033[K{text}" if sys.stderr.isatty() else f"{text}\n")
    sys.stderr.flush()


def end_progress() -> None:
    """Clear the progress line from the terminal."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")


def benchmark(quick: bool) -> dict:
    """Measure every case, interleaved; return the results."""
    cases = make_cases(RUN_BYTES >> 6 if quick else RUN_BYTES, 2_000 if quick else RUN_BLOCKS)
    for case in cases:
        progress(f"checking every byte: {case}")
        verify(case.transport, case.slots, case.block)
    repeats = 1 if quick else REPEATS
    ping_pongs = []
    for repeat in range(repeats):
        for number, case in enumerate(cases, 1):
            progress(f"run {repeat + 1}/{repeats}, case {number}/{len(cases)}: {case}")
            case.measure()
        progress(f"run {repeat + 1}/{repeats}: 64-byte ping-pong through a pipe")
        ping_pongs.append(ping_pong_us(cases[0].count))
    stream = STREAM_BYTES >> 4 if quick else STREAM_BYTES
    progress(f"streaming {show_size(stream)} through processb --raw | processa --raw")
    rss = stream_peak_rss(stream)
    end_progress()

    results = [case.result() for case in cases]
    pipe_gbps = {r["block"]: r["gbps"] for r in results if r["transport"] == "pipe"}
    for result in results:
        result["ratio_to_pipe"] = result["gbps"] / pipe_gbps[result["block"]]
    lock_step_64 = next(r for r in results if r["transport"] == "shm" and r["block"] == 64
                        and r["slots"] == 1)  # with one slot, each send waits for its ack
    return {"machine": machine(), "cases": results,
            "latency_us": {"shm": 1e6 / lock_step_64["msgs_per_s"],
                           "pipe": statistics.median(ping_pongs)},
            "peak_rss_kib": rss}


def print_table(results: dict) -> None:
    """Print the results for people."""
    m = results["machine"]
    print(f"{m['cpu']}, {m['cpus']} CPUs, {m['arch']}, Linux {m['kernel']},"
          f" Python {m['python']}\n")
    print("| transport | block | slots | GB/s | messages/s | vs os.pipe |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results["cases"]:
        print(f"| {r['transport']} | {show_size(r['block'])} | {r['slots']} | {r['gbps']:.2f}"
              f" | {r['msgs_per_s']:,.0f} | {r['ratio_to_pipe']:.2f}x |")
    latency = results["latency_us"]
    print(f"\n64-byte round trip: shm {latency['shm']:.1f} us (send, then the ack),"
          f" os.pipe {latency['pipe']:.1f} us (ping-pong):"
          f" {latency['shm'] / latency['pipe']:.2f}x")
    rss = results["peak_rss_kib"]
    print(f"peak RSS streaming through --raw: processa {rss['reader'] / 1024:.1f} MiB,"
          f" processb {rss['writer'] / 1024:.1f} MiB")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table, or JSON with --json."""
    parser = argparse.ArgumentParser(prog="bench_shm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a short smoke run (seconds), for CI: its numbers mean little")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = parser.parse_args(argv)
    results = benchmark(args.quick)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
