"""processa.py - the reader: creates the segment and prints what processb sends.

Start it first, in one terminal, then processb.py in a second one; type lines
into the second and watch them arrive here. A third terminal can watch the
segment with `make watch` (ipcs -m once a second).

    terminal 1: make run-a                         terminal 2: make run-b
    [Info][...]::ftok('/home/you/shm', 0x1246) gave key 0x46010004
    [Info][...]::shmget created shmid 3: 4096 bytes, mode 0600
    [Info][...]::shmat mapped shmid 3 at 0x7f3d9420f000
    [Info][...]::IPC_STAT: size 4096, nattch 1, key 0x46010004, mode 0600
    [Info][...]::waiting for processb on /tmp/shmm-1000/0x46010004.notify
                                                   Please enter: hello
    Message received: hello
                                                   Please enter: 你好，共享内存
    Message received: 你好，共享内存
                                                   Please enter: ^D
    [Info][...]::processb (pid 4242) closed the channel after 2 messages
    [Info][...]::removed /tmp/shmm-1000/0x46010004.ack
    [Info][...]::removed /tmp/shmm-1000/0x46010004.notify
    [Info][...]::detached from shmid 3 (shmdt)
    [Info][...]::removed shmid 3 (IPC_RMID)

In order, it: derives the key with ftok(3); creates the segment exclusively
with shmget(2) (removing one that a crashed processa left behind); attaches
it with shmat(2) and writes the header; makes the two FIFOs; waits for
processb; prints each message as it arrives; and, when processb closes or a
signal comes, closes and removes the FIFOs, detaches with shmdt(2) and
removes the segment with shmctl(2) IPC_RMID.

Messages go to stdout, one line each, as soon as they arrive; with --raw,
the bytes processb streams are written to stdout exactly as sent. Logs go
to stderr. Exit status: 0 when processb closed the channel, others as
listed in comm.py and README.md. Signal N (Ctrl-C, kill, a closed terminal)
makes it clean up and then die by that signal, so that a script or loop
around it stops too; the shell shows 128 + N (130 for Ctrl-C).

Companion: processb.py (the writer). Library: shmm.py. Constants: comm.py.
Man pages: ftok(3), shmget(2), shmat(2), shmdt(2), shmctl(2), fifo(7).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import comm
import shmm
from comm import ExitCode

log = logging.getLogger("processa")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Read the command line; --help prints this module's docstring."""
    parser = argparse.ArgumentParser(prog="processa.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    shmm.add_channel_options(parser)
    parser.add_argument("--slots", type=shmm.int_argument, default=comm.SLOTS, metavar="N",
                        help="message slots in the segment (default: %(default)s, lock-step)")
    args = parser.parse_args(argv)
    if not 1 <= args.slots <= shmm.MAX_SLOTS:
        parser.error(f"--slots {args.slots}: choose 1 to {shmm.MAX_SLOTS}, so that the tokens"
                     " of a full ring fit in a FIFO (64 KiB)")
    if args.seed_protocol and (args.raw or args.slots != 1):
        parser.error("--seed-protocol sends lines through one string: no --raw, no --slots")
    if args.size < shmm.segment_size(args.slots):
        parser.error(f"--size {args.size} is too small for {args.slots} slot(s): the headers"
                     f" need at least {shmm.segment_size(args.slots)} bytes")
    return args


class Printer:
    """Write what arrives to stdout: each whole message as one line, or with
    --raw the bytes themselves. Unbuffered, so each appears as it comes."""

    def __init__(self, raw: bool) -> None:
        self.raw = raw
        self.parts: list[bytes] = []  # the frames of a message still arriving

    def __call__(self, payload: memoryview, more: bool) -> None:
        if self.raw:
            write_all(payload)
        else:
            # Copy out of the segment now: the slot is handed back after this.
            self.parts.append(bytes(payload))
            if not more:
                write_all(b"Message received: " + b"".join(self.parts) + b"\n")
                self.parts.clear()


def write_all(data: bytes | memoryview) -> None:
    """Write all of data to stdout, however many write(2) calls it takes."""
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(sys.stdout.fileno(), view):]
    except BrokenPipeError:
        raise shmm.Refused(ExitCode.FAILURE, "stdout was closed (EPIPE): nobody reads"
                           " the messages any more") from None


def log_status(segment: shmm.Segment) -> None:
    """Log what the kernel says about the segment, as the tutorial printed it."""
    status = segment.status()
    # The tutorial printed mode as 438: that is 0666 in decimal.
    log.info("IPC_STAT: size %d, nattch %d, key %s, mode %04o", status.shm_segsz,
             status.shm_nattch, shmm.show_key(status.shm_perm.key), status.shm_perm.mode & 0o777)


def opened(cleanup: shmm.Cleanup, path: str, flags: int) -> int:
    """Open path, and close it when the cleanup unwinds."""
    fd = os.open(path, flags)
    cleanup.callback(os.close, fd)
    return fd


def serve(args: argparse.Namespace) -> int:
    """Create and attach the segment, serve processb, clean up."""
    key = shmm.key_from_arguments(args)
    log.info("ftok(%r, %#x) gave key %s", args.path, args.proj_id, shmm.show_key(key))
    with shmm.Cleanup() as cleanup:
        # Create and attach with signals held, so that the segment is
        # registered for removal before a Ctrl-C can stop us.
        with shmm.signals_deferred():
            segment = cleanup.enter_context(shmm.create_segment(key, args.size, args.mode))
            memory = segment.attach()
        log.info("shmget created shmid %d: %d bytes, mode %04o", segment.shmid, args.size,
                 args.mode)
        log.info("shmat mapped shmid %d at %#x", segment.shmid, segment.address)
        log_status(segment)
        serve_protocol = serve_tutorial_protocol if args.seed_protocol else serve_messages
        serve_protocol(cleanup, key, memory, args)
    return ExitCode.OK


def serve_messages(cleanup: shmm.Cleanup, key: int, memory: memoryview,
                   args: argparse.Namespace) -> None:
    """Lay out the slots, make the FIFOs, print what arrives until processb closes."""
    slot_size = shmm.write_header(memory, args.slots)
    with shmm.signals_deferred():
        notify_path, ack_path = cleanup.enter_context(shmm.fifos(key))

    # Each open blocks until processb opens the other end: the ack FIFO
    # first, then notify (processb opens them in the same order).
    log.info("waiting for processb on %s", notify_path)
    ack_fd = opened(cleanup, ack_path, os.O_WRONLY)
    notify_fd = opened(cleanup, notify_path, os.O_RDONLY)
    log.debug("a writer opened both FIFOs")

    reader = shmm.Reader(memory, args.slots, slot_size, notify_fd, ack_fd)
    reader.receive(Printer(args.raw))
    log.info("processb (pid %d) closed the channel after %d messages",
             shmm.read_header(memory)[2], reader.messages)


def serve_tutorial_protocol(cleanup: shmm.Cleanup, _key: int, memory: memoryview,
                            _args: argparse.Namespace) -> None:
    """Speak the tutorial's protocol (see shmm.py): print the C string at
    offset 0 each time a byte arrives on ./myfifo."""
    with shmm.signals_deferred():
        cleanup.enter_context(shmm.fifo(comm.SEED_FIFO, comm.SEED_FIFO_MODE))
    log.info("waiting for a writer on ./%s (the tutorial's protocol)", comm.SEED_FIFO)
    fifo_fd = opened(cleanup, comm.SEED_FIFO, os.O_RDONLY)
    messages = 0
    while os.read(fifo_fd, 1):
        write_all(b"Message received: " + shmm.read_c_string(memory))  # keeps its newline
        messages += 1
    log.info("the writer closed ./%s after %d messages", comm.SEED_FIFO, messages)


def main(argv: list[str] | None = None) -> int:
    """Run processa; return its exit status."""
    args = parse_arguments(argv)
    shmm.configure_logging(args.verbose - args.quiet)
    return shmm.run("processa", lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
