"""bench_shm.py - is shared memory fast? Our channel against what users pick instead.

The tutorial ends by saying that shared memory is efficient because the
data is not copied through the kernel. This measures how true that is for
the channel that processa and processb use, in three parts, interleaved:

1. Messages through the library: shmm.Writer and shmm.Reader, the very
   code, over a System V segment, against os.pipe, multiprocessing.Pipe
   (send_bytes, recv_bytes_into) and multiprocessing.shared_memory in
   lock-step (one block in the segment), counted either as the tutorial
   does, with one byte each way on a pipe, or as ours is, with two
   multiprocessing.Semaphore waited on as ours are (spinning, then timed
   sleeps): the same design from the standard library, so that the ratio
   to it separates our design from our way of waiting. At 64 B to 1 MiB a
   message. Our segment has one slot sized for one message (lock-step),
   or processa's defaults (one slot of a 4 KiB segment: a larger message
   goes in pieces), or 16 slots of 64 KiB, as a user would size it, so that
   small messages share frames.
2. The round trip of 64 bytes: our lock-step against an os.pipe ping-pong
   that sleeps in read(2), and one that polls its pipe before it sleeps,
   for as long as ours spins at most (shmm.SPIN_MOST), so that the ratio
   compares the channels, not the ways of waiting.
3. End to end, the commands people run, timed whole (interpreter start-up
   included): a million lines through processb.py into processa.py, against
   a Python relay (two Python processes joined by a pipe) and
   `sed 's/^/Message received: /' | cat`; 1 GiB through --raw against
   `cat | cat`. Then the peak memory of processa and processb while 1 GiB
   of lines, and 1 GiB with --raw, streams through them.

    $ make bench                  # a few minutes; prints the tables
    $ python3 bench_shm.py --quick --json

How it checks. In part 1 each run forks a reader, which takes every message
out into its own page-aligned buffer, as a consumer would; the writer's
clock stops when the reader has taken the last one. Every message carries
its number in its first and last 8 bytes, and the reader checks both: a
lost, repeated, reordered or torn message fails the run; before it is
timed, each case also moves a few messages with a CRC-32 of every byte on
both sides. In part 3 every command's output, the baselines' included, is
compared byte for byte with the expected output before it is timed. Results
are the medians of interleaved repeats; the load average is reported, since
other work on the machine moves every figure.

--json prints one object:
    machine        {cpu, cpus, arch, kernel, python}
    load           {start, end}: 1-minute load average around the run
    repeats        timed runs per case; every figure is their median
    cases          part 1, one per transport, block and segment:
                   {transport: "pipe", "mp_pipe", "shm", "shm_defaults"
                    (ours at processa's default size and slots), "posix_shm"
                    (shared_memory, a byte each way on pipes) or
                    "posix_shm_sem" (shared_memory, two Semaphores),
                    block: bytes per message, slots: 1 or 16,
                    slot_size: bytes per slot (ours; 0 for the others),
                    gbps, msgs_per_s,
                    ratio_to_pipe, ratio_to_mp_pipe: our messages/s over
                    theirs at the same block size (above 1: we are faster)}
    latency_us     part 2, microseconds per 64-byte round trip:
                   {shm, pipe (sleeps in read), pipe_polling (polls first)}
    end_to_end     part 3, one per command: {name, stream: "lines" or "raw",
                    amount: lines or bytes, seconds: median, whole runs,
                    speedup: {baseline name: its seconds over ours} for our
                    commands (above 1: we are faster); {} for the baselines}
    stream_bytes   bytes streamed for each peak_rss (1 GiB; --quick: 64 MiB)
    peak_rss_kib   {reader, writer}: processa's and processb's peak resident
                   memory in KiB, streaming stream_bytes with --raw
    peak_rss_lines_kib  the same, streaming stream_bytes of lines

README.md ("Performance") has the tables of one run and what limits each case.
Companion: shmm.py (Writer, Reader). Man pages: shmget(2), pipe(7).
"""
from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing
import os
import platform
import select
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from multiprocessing import shared_memory
from typing import IO, Any, Callable, NamedTuple  # noqa: UP035 - collections.abc's needs Python 3.9

import comm
import shmm

BLOCKS = (64, 4096, 64 * 1024, 1024 * 1024)  # bytes per message
STAMP = struct.Struct("=Q")                   # a message's number, at both of its ends
RUN_BYTES = 256 << 20                         # bytes per timed run...
RUN_MESSAGES = 200_000                        # ...but no more messages than this...
LOCK_STEP_MESSAGES = 20_000                   # ...or this, where each one waits for the other side
REPEATS = 5                                   # timed runs per case; we report the median
SLOTS = 16                                    # slots of the user-sized segment...
SLOT_SIZE = 64 * 1024                         # ...each this many bytes, frame header included
USER_SIZE = shmm.HEADER_SIZE + SLOTS * SLOT_SIZE  # bytes: that segment (1 MiB + its header)
LINES = 1_000_000                             # lines through the end-to-end commands
RAW_BYTES = 1 << 30                           # bytes through the --raw end-to-end commands
STREAM_BYTES = 1 << 30                        # bytes streamed while we watch peak memory
PREFIX = b"Message received: "                # what processa prints before each line
HERE = os.path.dirname(os.path.abspath(__file__))

Check = Callable[[memoryview, int], None]     # the reader's test of each message it takes


# --- 1. Messages ---------------------------------------------------------------------


def aligned_buffer(size: int) -> memoryview:
    """Return size bytes that start on a page boundary, where memcpy runs fastest."""
    return memoryview(mmap.mmap(-1, size))


def stamp(block: memoryview, number: int) -> None:
    """Write the message's number into its first and last 8 bytes."""
    STAMP.pack_into(block, 0, number)
    STAMP.pack_into(block, len(block) - STAMP.size, number)


def check_stamp(block: memoryview, number: int) -> None:
    """Fail unless the message carries this number at both ends."""
    first = STAMP.unpack_from(block, 0)[0]
    last = STAMP.unpack_from(block, len(block) - STAMP.size)[0]
    if first != number or last != number:
        raise RuntimeError(f"message {number} arrived as {first}/{last}: lost or torn")


# --- 2. The transports ----------------------------------------------------------------
#
# Each make_* runs in the parent before the reader is forked. It returns the
# writer's function, write(source, count), which sends count stamped copies
# of source and returns once the reader has taken them all; the reader's,
# read(sink, count, check), which takes each message into sink and checks
# it; and for each side, a function that closes its ends, so that each
# process can close the other's and hold only its own: a pipe shows end of
# file only when every write end is closed. Every reader does the same work per message:
# one copy into sink, one check.


class Transport(NamedTuple):
    write: Callable[[memoryview, int], None]
    read: Callable[[memoryview, int, Check], None]
    close_writer_ends: Callable[[], None]
    close_reader_ends: Callable[[], None]


def make_shm(block: int, slots: int, size: int) -> Transport:
    """Our channel: a System V segment of size bytes, shmm.Writer and shmm.Reader."""
    segment = shmm.Segment.create(shmm.IPC_PRIVATE, size, 0o600)
    memory = segment.attach()
    segment.remove()  # freed when both processes have detached, whatever happens
    slot_size = shmm.write_header(memory, slots, shmm.BYTES)
    shmm.init_counts(memory, slots)
    notify_r, notify_w = os.pipe()  # as processa's FIFOs: the hello, and each side's hang-up
    ack_r, ack_w = os.pipe()

    def write(source: memoryview, count: int) -> None:
        writer = shmm.Writer(memory, slots, slot_size, notify_w, ack_r)
        for number in range(count):
            stamp(source, number)
            writer.send(source)
        writer.close()  # waits until the reader has taken every frame
        segment.detach()

    def read(sink: memoryview, count: int, check: Check) -> None:
        reader = shmm.Reader(memory, slots, slot_size, notify_r)
        at = 0  # a message longer than a frame comes in pieces flagged MORE
        taken = 0  # whole messages so far

        def take(piece: memoryview, more: int) -> None:
            nonlocal at, taken
            sink[at:at + len(piece)] = piece
            at += len(piece)
            if not more:
                check(sink, taken)
                taken += 1
                at = 0

        if not reader.receive(take) or reader.messages != count:
            raise RuntimeError(f"{reader.messages} messages arrived of {count}")
        shmm.destroy_counts(memory)  # the writer has hung up, as processa does

    return Transport(write, read, lambda: close_all(notify_w, ack_r),
                     lambda: close_all(notify_r, ack_w))


def make_pipe(block: int, _slots: int, _size: int) -> Transport:
    """os.pipe: write(2) each message, read(2) it into the reader's buffer."""
    data_r, data_w = os.pipe()
    done_r, done_w = os.pipe()

    def write(source: memoryview, count: int) -> None:
        for number in range(count):
            stamp(source, number)
            os.write(data_w, source)  # a blocking pipe takes the whole message
        os.read(done_r, 1)

    def read(sink: memoryview, count: int, check: Check) -> None:
        for number in range(count):
            got = 0
            while got < block:
                got += os.readv(data_r, [sink[got:]])
            check(sink, number)
        os.write(done_w, b".")

    return Transport(write, read, lambda: close_all(data_w, done_r),
                     lambda: close_all(data_r, done_w))


def make_mp_pipe(_block: int, _slots: int, _size: int) -> Transport:
    """multiprocessing.Pipe (a socket pair): send_bytes, recv_bytes_into."""
    writer_end, reader_end = multiprocessing.Pipe()

    def write(source: memoryview, count: int) -> None:
        for number in range(count):
            stamp(source, number)
            writer_end.send_bytes(source)
        writer_end.recv_bytes()

    def read(sink: memoryview, count: int, check: Check) -> None:
        for number in range(count):
            reader_end.recv_bytes_into(sink)
            check(sink, number)
        reader_end.send_bytes(b".")

    return Transport(write, read, writer_end.close, reader_end.close)


def make_posix_shm(block: int, _slots: int, _size: int) -> Transport:
    """multiprocessing.shared_memory in lock-step: one message in the segment,
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

    return Transport(write, read, lambda: close_all(notify_w, ack_r),
                     lambda: close_all(notify_r, ack_w))


def make_posix_shm_sem(block: int, _slots: int, _size: int) -> Transport:
    """The design of ours with one slot, as a user could build it from the
    standard library: multiprocessing.shared_memory in lock-step, counted by two
    multiprocessing.Semaphore (POSIX semaphores too), waited on as ours are."""
    segment = shared_memory.SharedMemory(create=True, size=block)
    segment.unlink()
    full, free = multiprocessing.Semaphore(0), multiprocessing.Semaphore(1)
    take_full, take_free = Waiting(full), Waiting(free)

    def write(source: memoryview, count: int) -> None:
        for number in range(count):
            stamp(source, number)
            take_free.wait()
            segment.buf[:block] = source
            full.release()
        take_free.wait()  # the last message taken
        segment.close()

    def read(sink: memoryview, count: int, check: Check) -> None:
        for number in range(count):
            take_full.wait()
            sink[:] = segment.buf[:block]
            free.release()
            check(sink, number)

    return Transport(write, read, lambda: None, lambda: None)  # no ends to close


class Waiting:
    """Wait on a multiprocessing.Semaphore as shmm.Count waits on a count:
    spin with acquire(block=False) for an adaptive budget, then sleep in timed
    acquires (sem_timedwait, as ours)."""

    def __init__(self, semaphore: Any) -> None:
        self.semaphore = semaphore
        self.spins = len(os.sched_getaffinity(0)) > 1
        self.spin = shmm.SPIN_MOST if self.spins else 0.0

    def wait(self) -> None:
        """Take one, as shmm.Count.wait does (the same budget, grown and shrunk alike)."""
        acquire = self.semaphore.acquire
        if acquire(False):
            return
        started = time.perf_counter()
        until = started + self.spin
        while time.perf_counter() < until:
            if acquire(False):
                self.spin = min(shmm.SPIN_MOST, self.spin * 2)
                return
        while not acquire(True, shmm.SLEEP_MOST):
            pass  # ours looks for a hang-up here; the benchmark's peers do not die
        if self.spins:
            if time.perf_counter() - started < shmm.SPIN_MOST:
                self.spin = min(shmm.SPIN_MOST, self.spin * 2)
            else:
                self.spin = max(shmm.SPIN_LEAST, self.spin / 2)


TRANSPORTS = {"pipe": make_pipe, "mp_pipe": make_mp_pipe, "shm": make_shm,
              "shm_defaults": make_shm, "posix_shm": make_posix_shm,
              "posix_shm_sem": make_posix_shm_sem}
NAMES = {"pipe": "os.pipe", "mp_pipe": "multiprocessing.Pipe", "shm": "shm (ours)",
         "shm_defaults": "shm (ours), processa's defaults",
         "posix_shm": "shared_memory lock-step", "posix_shm_sem": "shared_memory + Semaphores"}


def move(transport: str, slots: int, size: int, source: memoryview, count: int,
         check: Check) -> float:
    """Fork a reader, send count stamped copies of source through the
    transport, and return the seconds the writer took."""
    write, read, close_writer_ends, close_reader_ends = TRANSPORTS[transport](
        len(source), slots, size)
    reader = os.fork()
    if reader == 0:
        status = 1
        try:
            close_writer_ends()
            read(aligned_buffer(len(source)), count, check)
            status = 0
        except (RuntimeError, OSError, EOFError, shmm.Refused) as error:
            print(f"bench_shm: reader of {transport}: {error}", file=sys.stderr)
        finally:
            os._exit(status)  # never return into the parent's loop
    close_reader_ends()
    try:
        started = time.perf_counter()
        write(source, count)
        seconds = time.perf_counter() - started
    finally:
        close_writer_ends()  # also lets a reader that waits for more see the end
    if os.waitpid(reader, 0)[1] != 0:
        raise SystemExit(f"bench_shm: the reader of {transport} failed")
    return seconds


def close_all(*fds: int) -> None:
    """Close each file descriptor."""
    for fd in fds:
        os.close(fd)


def verify(transport: str, slots: int, size: int, block: int) -> None:
    """Send 16 messages with a CRC-32 of every byte on both sides; fail if they differ."""
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

    move(transport, slots, size, source, count, check_every_byte)
    got = STAMP.unpack(os.read(crc_r, STAMP.size))[0]
    close_all(crc_r, crc_w)
    if got != sent:
        raise SystemExit(f"bench_shm: {transport} {block} B: CRC-32 {got:#x} arrived,"
                         f" {sent:#x} sent")


def random_block(block: int) -> memoryview:
    """Return a page-aligned block of random bytes."""
    source = aligned_buffer(block)
    source[:] = os.urandom(block)
    return source


# --- 3. The library cases, measured -----------------------------------------------


class Case:
    """One thing to measure: a transport, a message size, a segment."""

    def __init__(self, transport: str, block: int, slots: int, size: int, count: int) -> None:
        self.transport = transport  # a key of TRANSPORTS
        self.block = block          # bytes per message
        self.slots = slots          # slots in the segment (1 for the others: they have none)
        self.size = size            # bytes in our segment (0 for the others)
        self.count = count          # messages per timed run
        self.seconds: list[float] = []

    def __str__(self) -> str:
        return f"{NAMES[self.transport]} {show_size(self.block)}{self.segment()}"

    def segment(self) -> str:
        """Describe our segment: ', 16 slots of 64 KiB'; '' for the others."""
        if not self.size:
            return ""
        slot_size = shmm.slot_size_for(self.size, self.slots)
        return f", {self.slots} slot{'s' * (self.slots > 1)} of {show_size(slot_size)}"

    def verify(self) -> None:
        """Check every byte of a few messages."""
        verify(self.transport, self.slots, self.size, self.block)

    def measure(self) -> None:
        """Time one run and keep its seconds."""
        source = random_block(self.block)
        self.seconds.append(move(self.transport, self.slots, self.size, source, self.count,
                                 check_stamp))

    def result(self) -> dict:
        """Return this case's numbers, from the median run."""
        seconds = statistics.median(self.seconds)
        slot_size = shmm.slot_size_for(self.size, self.slots) if self.size else 0
        return {"transport": self.transport, "block": self.block, "slots": self.slots,
                "slot_size": slot_size, "gbps": self.block * self.count / seconds / 1e9,
                "msgs_per_s": self.count / seconds}


def show_size(size: int) -> str:
    """Show 65536 as 64 KiB."""
    for unit, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if size >= unit and size % unit == 0:
            return f"{size // unit} {name}"
    return f"{size} B"


def make_cases(run_bytes: int, most: int, lock_step_most: int) -> list[Case]:
    """Every transport at every message size; ours with one slot sized for one
    message (lock-step), at processa's defaults (one slot of the default
    segment: larger messages go in pieces), and with the user-sized segment."""
    cases = []
    for block in BLOCKS:
        count = max(16, min(run_bytes // block, most))
        lock_step = max(16, min(run_bytes // block, lock_step_most))
        cases += [Case("pipe", block, 1, 0, count), Case("mp_pipe", block, 1, 0, count),
                  Case("shm", block, 1, shmm.segment_size(1, block), lock_step),
                  Case("shm_defaults", block, 1, comm.SEGMENT_SIZE, lock_step),
                  Case("shm", block, SLOTS, USER_SIZE, count),
                  Case("posix_shm", block, 1, 0, lock_step),
                  Case("posix_shm_sem", block, 1, 0, lock_step)]
    return cases


def library_results(cases: list[Case]) -> list[dict]:
    """Return each case's numbers, with its ratios to os.pipe and multiprocessing.Pipe."""
    results = [case.result() for case in cases]
    rates = {(r["transport"], r["block"]): r["msgs_per_s"] for r in results}
    for result in results:
        for peer in ("pipe", "mp_pipe"):
            result[f"ratio_to_{peer}"] = result["msgs_per_s"] / rates[peer, result["block"]]
    return results


# --- 4. The round trip ------------------------------------------------------------------
#
# Ours is the 64-byte lock-step case above: with one slot, the writer fills
# the slot, counts it and waits for it back before it can fill it again,
# so each message costs one trip there and one back. The pipe does the same
# here: 64 stamped bytes there, checked, one byte back. Waiting decides
# most of it, so the pipe runs twice: sleeping in read(2), as a plain
# program does, and polling its pipe first for up to shmm.SPIN_MOST, as
# ours spins on its count, so that the ratio compares the channels, not
# the ways of waiting.


class PollingReader:
    """A pipe's reading end that polls, for up to shmm.SPIN_MOST with two CPUs
    or more, before it sleeps in poll(2)."""

    def __init__(self, fd: int, most: int) -> None:
        self.fd = fd
        self.most = most                      # bytes to take at most per read
        os.set_blocking(fd, False)            # a read with none waiting: EAGAIN
        self.sleeper = select.poll()
        self.sleeper.register(fd, select.POLLIN)
        self.spin = shmm.SPIN_MOST if len(os.sched_getaffinity(0)) > 1 else 0.0

    def read(self) -> bytes:
        """Wait for bytes, polling first, and return what was waiting."""
        spin_until = time.perf_counter() + self.spin
        while True:
            try:
                return os.read(self.fd, self.most)
            except BlockingIOError:
                if time.perf_counter() >= spin_until:
                    self.sleeper.poll()


class PingPong:
    """A 64-byte round trip through two pipes, waiting plainly or as we do."""

    def __init__(self, polling: bool, round_trips: int) -> None:
        self.polling = polling          # poll before sleeping (PollingReader)
        self.round_trips = round_trips  # per timed run
        self.seconds: list[float] = []

    def __str__(self) -> str:
        return f"os.pipe 64 B round trip, {'polling' if self.polling else 'sleeping'}"

    def verify(self) -> None:
        """Nothing to check beyond the stamps it checks as it runs."""

    def measure(self) -> None:
        """Time one run of round trips and keep its seconds."""
        there_r, there_w = os.pipe()
        back_r, back_w = os.pipe()
        child = os.fork()
        if child == 0:
            status = 1
            try:
                close_all(there_w, back_r)
                take = self.receiver(there_r, 64)
                for number in range(self.round_trips):
                    check_stamp(memoryview(take()), number)
                    os.write(back_w, b".")
                status = 0
            except (RuntimeError, OSError) as error:
                print(f"bench_shm: ping-pong: {error}", file=sys.stderr)
            finally:
                os._exit(status)
        close_all(there_r, back_w)
        ball = aligned_buffer(64)
        take = self.receiver(back_r, 1)
        started = time.perf_counter()
        for number in range(self.round_trips):
            stamp(ball, number)
            os.write(there_w, ball)
            take()
        self.seconds.append(time.perf_counter() - started)
        close_all(there_w, back_r)
        if os.waitpid(child, 0)[1] != 0:
            raise SystemExit("bench_shm: the other end of the ping-pong failed")

    def receiver(self, fd: int, size: int) -> Callable[[], bytes]:
        """Return a function that waits for size bytes on fd and returns them."""
        if self.polling:
            return PollingReader(fd, size).read
        return lambda: os.read(fd, size)  # a pipe's write of 64 bytes or less is atomic

    def microseconds(self) -> float:
        """Return the median run's microseconds per round trip."""
        return statistics.median(self.seconds) / self.round_trips * 1e6


# --- 5. End to end: the commands people run ---------------------------------------------
#
# Each command is timed whole, from the first process started to the last
# one ended, so interpreter start-up counts, as it does for whoever runs it.
# Input comes from a file, output goes to /dev/null; before any of that, a
# run with the output on a pipe to us is compared byte for byte with what
# it must be: each input line with the prefix for the line commands, the
# input itself for the --raw ones. Our commands get a fresh ftok path (a
# new temporary directory) each run, and processa starts first, since it
# creates the segment that processb attaches.

RELAY_COPY = """import sys
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(line)
"""
RELAY_PRINT = """import sys
for line in sys.stdin.buffer:
    sys.stdout.buffer.write(b"Message received: " + line)
"""
DEADLINE = 600  # seconds any one command may take, however loaded the machine


class Command:
    """One command line to time whole: ours (processb.py into processa.py) or
    a pipeline of programs, each reading the one before it."""

    def __init__(self, name: str, stream: str, stages: list[list[str]], ours: bool) -> None:
        self.name = name        # as it reads in the table
        self.stream = stream    # "lines" or "raw"
        self.stages = stages    # argv of each process, in the order the data flows
        self.ours = ours        # processb then processa, joined by the segment, not a pipe
        self.input = ""         # the file it reads
        self.expected = ""      # what it must print
        self.amount = 0         # lines or bytes in the input
        self.baselines: list[Command] = []  # what ours is compared with
        self.seconds: list[float] = []

    def __str__(self) -> str:
        return f"{self.name}, {show_amount(self.stream, self.amount)}"

    def start(self, source: IO[bytes], sink: int | IO[bytes], ftok_path: str
              ) -> list[subprocess.Popen]:
        """Start every process; the first in the list is the one that prints."""
        if self.ours:
            writer, reader = self.stages
            return [subprocess.Popen([*reader, "--path", ftok_path], stdin=subprocess.DEVNULL,
                                     stdout=sink),
                    subprocess.Popen([*writer, "--path", ftok_path], stdin=source,
                                     stdout=subprocess.DEVNULL)]
        processes: list[subprocess.Popen] = []
        for number, argv in enumerate(self.stages, 1):
            last = number == len(self.stages)
            stdin = processes[-1].stdout if processes else source
            processes.append(subprocess.Popen(argv, stdin=stdin,
                                              stdout=sink if last else subprocess.PIPE))
            if stdin is not source:
                stdin.close()  # only the next stage holds the pipe: it sees its end
        return processes[::-1]

    def verify(self) -> None:
        """Run once with the output on a pipe; fail unless it is exactly the expected bytes."""
        with open(self.input, "rb") as source, open(self.expected, "rb") as expected, \
                tempfile.TemporaryDirectory() as ftok_path:
            processes = self.start(source, subprocess.PIPE, ftok_path)
            output = processes[0].stdout
            assert output is not None
            offset, same = 0, True
            while same and (chunk := output.read(1 << 20)):
                same = expected.read(len(chunk)) == chunk
                offset += len(chunk)
            same = same and not expected.read(1)
            output.close()
            self.finish(processes)
        if not same:
            raise SystemExit(f"bench_shm: {self}: the output differs from the expected"
                             f" within its first {offset} bytes")

    def measure(self) -> None:
        """Time one whole run, output to /dev/null, and keep its seconds."""
        with open(self.input, "rb") as source, open(os.devnull, "wb") as sink, \
                tempfile.TemporaryDirectory() as ftok_path:
            started = time.perf_counter()
            self.finish(self.start(source, sink, ftok_path))
            self.seconds.append(time.perf_counter() - started)

    def finish(self, processes: list[subprocess.Popen]) -> None:
        """Wait for every process; if one fails or hangs, stop them all and fail."""
        try:
            for process in processes:
                if process.wait(timeout=DEADLINE) != 0:
                    raise SystemExit(f"bench_shm: {self}: {process.args[:2]} exited with"
                                     f" {process.returncode}")
        except subprocess.TimeoutExpired:
            raise SystemExit(f"bench_shm: {self}: not done after {DEADLINE} s") from None
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()

    def result(self) -> dict:
        """Return the median run's seconds, and the baselines' over ours."""
        seconds = statistics.median(self.seconds)
        return {"name": self.name, "stream": self.stream, "amount": self.amount,
                "seconds": seconds,
                "speedup": {b.name: statistics.median(b.seconds) / seconds
                            for b in self.baselines}}


def show_amount(stream: str, amount: int) -> str:
    """Show 1000000 lines as '1,000,000 lines', bytes as '1 GiB'."""
    return f"{amount:,} lines" if stream == "lines" else show_size(amount)


def ours(stream: str, slots: int = 0, size: int = 0) -> Command:
    """processb.py into processa.py: --slots for processa, --size for both, if given."""
    raw = ["--raw"] if stream == "raw" else []
    sized = ["--size", str(size)] if size else []
    slotted = ["--slots", str(slots)] if slots else []
    name = " ".join(["processb", *raw, *sized, "into processa", *raw, *slotted, *sized])
    return Command(name, stream,
                   [[sys.executable, f"{HERE}/processb.py", "-q", *raw, *sized],
                    [sys.executable, f"{HERE}/processa.py", "-q", *raw, *slotted, *sized]], True)


def make_commands(work: str, lines: int, raw_bytes: int) -> list[Command]:
    """Write the inputs and the expected outputs; return every command to time."""
    python = [sys.executable, "-c"]
    line_commands = [ours("lines"), ours("lines", SLOTS),
                     ours("lines", SLOTS, USER_SIZE),
                     Command("python relay", "lines",
                             [[*python, RELAY_COPY], [*python, RELAY_PRINT]], False),
                     Command("sed | cat", "lines",
                             [["sed", f"s/^/{PREFIX.decode()}/"], ["cat"]], False)]
    raw_commands = [ours("raw", SLOTS, USER_SIZE),
                    Command("cat | cat", "raw", [["cat"], ["cat"]], False)]
    write_lines(f"{work}/lines", lines)
    write_raw(f"{work}/raw", raw_bytes)
    for commands, name, amount in ((line_commands, "lines", lines),
                                   (raw_commands, "raw", raw_bytes)):
        for command in commands:
            command.input = f"{work}/{name}"
            command.expected = f"{work}/{name}.expected" if name == "lines" else command.input
            command.amount = amount
            if command.ours:
                command.baselines = [c for c in commands if not c.ours]
    return line_commands + raw_commands


def line(number: int) -> bytes:
    """Return line number of the input: digits, text and Chinese, of varied length."""
    return f"line {number}: {'你好，共享内存 ' * (number % 3)}{'x' * (number % 41)}\n".encode()


def write_lines(path: str, count: int) -> None:
    """Write count lines to path, and what processa must print for them to path.expected."""
    with open(path, "wb") as text, open(f"{path}.expected", "wb") as expected:
        for start in range(0, count, 10_000):
            chunk = [line(number) for number in range(start, min(start + 10_000, count))]
            text.writelines(chunk)
            expected.writelines(PREFIX + each for each in chunk)


def write_raw(path: str, size: int) -> None:
    """Write size bytes to path: random MiBs, each stamped with its number."""
    block = random_block(1 << 20)
    with open(path, "wb") as raw:
        for number in range(size >> 20):
            stamp(block, number)
            raw.write(block)


# --- 6. Peak memory of processa and processb ------------------------------------------
#
# ru_maxrss from wait4(2) would not do: Linux carries it across execve(2),
# so a child forked from this (large) process would report our peak. The
# VmHWM line of /proc/PID/status starts afresh with the new program, and
# only grows; we sample it while the stream runs, until the process ends.
# We write the stream ourselves, so that it can be larger than any file.


def stream_peak_rss(total: int, raw: bool) -> dict:
    """Stream total bytes (of lines, or --raw) through processb into processa, with
    the user-sized segment; return each one's peak resident memory in KiB."""
    user_sized = ["--size", str(USER_SIZE)]
    mode = ["--raw"] if raw else []
    chunk = random_block(1 << 20).tobytes() if raw else lines_of(1 << 20)
    with tempfile.TemporaryDirectory() as ftok_path:
        common = ["--path", ftok_path, "-q", *mode, *user_sized]
        reader = subprocess.Popen([sys.executable, f"{HERE}/processa.py", *common,
                                   "--slots", str(SLOTS)], stdout=subprocess.DEVNULL)
        writer = subprocess.Popen([sys.executable, f"{HERE}/processb.py", *common],
                                  stdin=subprocess.PIPE)
        assert writer.stdin is not None
        peaks = {"reader": 0, "writer": 0}
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


def lines_of(size: int) -> bytes:
    """Return whole lines of input, as many as fit in size bytes."""
    text = b"".join(line(number) for number in range(size // 8))[:size]
    return text[:text.rindex(b"\n") + 1]


def sample_peaks(peaks: dict, reader: subprocess.Popen, writer: subprocess.Popen) -> None:
    """Raise each peak to the process's VmHWM, if it is still running."""
    for name, process in (("reader", reader), ("writer", writer)):
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for row in status:
                    if row.startswith("VmHWM:"):
                        peaks[name] = max(peaks[name], int(row.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            pass  # it has ended: its last sample stands


# --- 7. Running it all ------------------------------------------------------------------


def machine() -> dict:
    """Describe the machine the numbers come from."""
    model = "unknown"
    with open("/proc/cpuinfo") as cpuinfo:
        for row in cpuinfo:
            if row.startswith(("model name", "Model")):
                model = row.split(":", 1)[1].strip()
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
    """Check, then measure every case, interleaved; return the results."""
    load = {"start": os.getloadavg()[0]}
    scale = 6 if quick else 0  # --quick: everything 64 times smaller (lines: 100)
    cases = make_cases(RUN_BYTES >> scale, RUN_MESSAGES >> scale, LOCK_STEP_MESSAGES >> scale)
    round_trips = LOCK_STEP_MESSAGES >> scale
    pings = [PingPong(False, round_trips), PingPong(True, round_trips)]
    work = tempfile.mkdtemp(prefix="bench_shm.")
    try:
        progress("writing the inputs of the end-to-end commands")
        commands = make_commands(work, LINES // 100 if quick else LINES,
                                 RAW_BYTES >> scale)
        everything: list[Case | PingPong | Command] = [*cases, *pings, *commands]
        for item in everything:
            progress(f"checking: {item}")
            item.verify()
        repeats = 1 if quick else REPEATS
        for repeat in range(repeats):
            for number, item in enumerate(everything, 1):
                progress(f"run {repeat + 1}/{repeats}, case {number}/{len(everything)}: {item}")
                item.measure()
    finally:
        shutil.rmtree(work)
    stream = STREAM_BYTES >> 4 if quick else STREAM_BYTES
    progress(f"streaming {show_size(stream)} through processb --raw into processa --raw")
    rss = stream_peak_rss(stream, raw=True)
    progress(f"streaming {show_size(stream)} of lines through processb into processa")
    rss_lines = stream_peak_rss(stream, raw=False)
    end_progress()
    load["end"] = os.getloadavg()[0]

    results = library_results(cases)
    lock_step_64 = next(r for r in results if r["transport"] == "shm" and r["block"] == 64
                        and r["slots"] == 1)  # with one slot, each send waits for its ack
    return {"machine": machine(), "load": load, "repeats": repeats, "cases": results,
            "latency_us": {"shm": 1e6 / lock_step_64["msgs_per_s"],
                           "pipe": pings[0].microseconds(),
                           "pipe_polling": pings[1].microseconds()},
            "end_to_end": [command.result() for command in commands],
            "stream_bytes": stream, "peak_rss_kib": rss, "peak_rss_lines_kib": rss_lines}


def print_table(results: dict) -> None:
    """Print the results for people."""
    m, load = results["machine"], results["load"]
    print(f"{m['cpu']}, {m['cpus']} CPUs, {m['arch']}, Linux {m['kernel']},"
          f" Python {m['python']}; load average {load['start']:.2f} at the start,"
          f" {load['end']:.2f} at the end; medians of {results['repeats']} interleaved runs.\n")
    print("Messages through the library (x: our messages/s over theirs, above 1 we are faster)\n")
    print("| transport | message | segment | GB/s | messages/s | vs os.pipe"
          " | vs multiprocessing.Pipe |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for r in results["cases"]:
        segment = (f"{r['slots']} x {show_size(r['slot_size'])}" if r["slot_size"]
                   else "")
        print(f"| {NAMES[r['transport']]} | {show_size(r['block'])} | {segment}"
              f" | {r['gbps']:.2f} | {r['msgs_per_s']:,.0f} | {r['ratio_to_pipe']:.2f}x"
              f" | {r['ratio_to_mp_pipe']:.2f}x |")
    latency = results["latency_us"]
    print(f"\n64-byte round trip: shm {latency['shm']:.1f} us (send, then the ack); os.pipe"
          f" ping-pong {latency['pipe']:.1f} us sleeping in read(2),"
          f" {latency['pipe_polling']:.1f} us polling first as ours spins."
          f" Ours takes {latency['shm'] / latency['pipe']:.2f}x and"
          f" {latency['shm'] / latency['pipe_polling']:.2f}x their time.\n")
    print("End to end, timed whole (x: their seconds over ours, above 1 we are faster)\n")
    print("| command | input | seconds | vs each baseline |")
    print("|---|---:|---:|---|")
    for r in results["end_to_end"]:
        versus = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in r["speedup"].items())
        print(f"| `{cell(r['name'])}` | {show_amount(r['stream'], r['amount'])}"
              f" | {r['seconds']:.2f} | {cell(versus)} |")
    lines, raw = results["peak_rss_lines_kib"], results["peak_rss_kib"]
    print(f"\nPeak RSS streaming {show_size(results['stream_bytes'])}: of lines, processa"
          f" {lines['reader'] / 1024:.1f} MiB and processb {lines['writer'] / 1024:.1f} MiB;"
          f" with --raw, processa {raw['reader'] / 1024:.1f} MiB and processb"
          f" {raw['writer'] / 1024:.1f} MiB.")


def cell(text: str) -> str:
    """Escape the | in a table cell, which would end it."""
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the tables, or JSON with --json."""
    parser = argparse.ArgumentParser(prog="bench_shm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (seconds), for CI: every case in miniature,"
                        " outputs checked; its numbers mean little")
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
