"""shmm.py - System V shared memory from Python, one system call at a time.

This file is the library behind processa.py (the reader, started first) and
processb.py (the writer). Read it top to bottom: each section introduces one
idea and builds on the sections above it, except that Part II already raises
the errors and relies on the cleanup of Part III, which a first reading can
take on trust.

    Part I. System V shared memory
     1. libc through ctypes         the C calls, declared once
     2. the key                     ftok(3)
     3. create or find              shmget(2)
     4. look at it                  shmctl(2) IPC_STAT, struct shmid_ds
     5. map and unmap               shmat(2), shmdt(2)
     6. remove                      shmctl(2) IPC_RMID
     7. the segment as one object   Segment, a context manager
    Part II. A channel between two processes
     8. the tutorial's channel      one C string, one FIFO, and what it loses
     9. the message layout          a header, then slots of frames of records
    10. the FIFOs                   the handshake, one writer, the death notice
    11. sending and receiving       two counts (POSIX semaphores), Writer and Reader
    Part III. What keeps it safe
    12. errors the user reads       one line and an exit code, never a traceback
    13. signals and cleanup         Ctrl-C never leaves a segment behind
    14. a segment left behind       what a crash leaves, and when to remove it
    Part IV. Plumbing
    15. for the programs            logging, standard streams, options
    16. the command line            python3 shmm.py key|ls|stat|rm|clean
    17. the experiments             python3 shmm.py create|attach|write|read|chmod
    18. the entry point             parse, then run one subcommand

It is also a small ipcs/ipcrm built on the same calls:

    $ python3 shmm.py key                # our key, as ipcs prints it (yours differs:
    0x46010004                           # ftok takes it from your file's inode)
    $ python3 shmm.py ls                 # like ipcs -m
    $ python3 shmm.py stat 3             # like ipcs -m -i 3, and the mode in decimal
    $ python3 shmm.py rm 3               # like ipcrm -m 3 (--key KEY: ipcrm -M)
    $ python3 shmm.py clean              # remove what a crashed processa left at our key

and one command for each experiment of the tutorial (`make lessons` runs
them all, in its order):

    $ python3 shmm.py create --size 4097 # shmget(key, 4097, IPC_CREAT|IPC_EXCL|0)
    65548
    $ python3 shmm.py create             # again: EEXIST (File exists), naming 65548
    $ python3 shmm.py chmod 65548 0600   # shmctl(IPC_SET): perms 0 -> 600
    $ python3 shmm.py attach 65548       # shmat: 8192 bytes = 2 pages; nattch 1
    $ python3 shmm.py write 65548 hello  # "hello" and a NUL at offset 0
    $ python3 shmm.py read 65548         # prints hello (--every 1: the tutorial's loop)

Man pages: svipc(7), ftok(3), shmget(2), shmat(2), shmdt(2), shmctl(2),
fifo(7), flock(2), sem_overview(7), sem_init(3), sem_post(3), sem_wait(3),
futex(2), ipcs(1), ipcrm(1).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import fcntl
import grp
import logging
import math
import os
import pwd
import re
import resource
import select
import shlex
import signal
import stat
import struct
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import comm
from comm import ExitCode

log = logging.getLogger("shmm")

# ======================================================================================
# Part I. System V shared memory
#
# Shared memory is the same pages of memory mapped into two processes:
# what one stores there, the other loads, with no system call and no copy
# through the kernel. Five calls make it (svipc(7)), and sections 2 to 7
# take them in the order a program meets them; section 1 is how Python
# calls C at all. The whole life of a segment, in Part I's own words:
#
#     key = make_key(".", 0x47)                   # 2. ftok(3): a name both sides compute
#     segment = Segment.create(key, 4096, 0o600)  # 3. shmget(2): a new segment, by key
#     memory = segment.attach()                   # 5. shmat(2): mapped here
#     memory[:6] = b"hello\0"                     #    a plain store: no system call
#     print(segment.status().shm_nattch)          # 4. IPC_STAT: 1 process attached
#     segment.detach()                            # 5. shmdt(2): unmapped; the segment stays
#     segment.remove()                            # 6. shmctl(2) IPC_RMID: gone
#
# Until the remove, even after this process has exited, another process
# that makes the same key finds the segment (Segment.find), attaches it and
# reads "hello": README.md's first program is that pair of processes.
# Sections 1 to 7 are complete on their own; someone who wants only that
# can stop reading at the end of section 7.
# ======================================================================================


# --- 1. libc through ctypes -----------------------------------------------------------
#
# CDLL(None) is the C library the interpreter is already linked with, found
# the way dlopen(NULL) finds it. use_errno=True makes ctypes save errno right
# after each call, where ctypes.get_errno() reads it; without it, errno is
# whatever later calls left there, often 0, and a failure reads "Success".

libc = ctypes.CDLL(None, use_errno=True)

# The numbers from <sys/ipc.h> and <sys/shm.h>, as Linux defines them.
IPC_PRIVATE = 0          # key: a new segment that only its shmid can find
IPC_CREAT = 0o1000       # shmget flag: create a segment if the key has none
IPC_EXCL = 0o2000        # shmget flag: with IPC_CREAT, fail (EEXIST) if it has one
SHM_RDONLY = 0o10000     # shmat flag: map the segment read-only
IPC_RMID = 0             # shmctl command: remove once the last process detaches
IPC_SET = 1              # shmctl command: set uid, gid and mode from a struct shmid_ds
IPC_STAT = 2             # shmctl command: copy the kernel's struct shmid_ds out
SHM_INFO = 14            # shmctl command: system totals; returns the highest index
SHM_STAT_ANY = 15        # shmctl command: IPC_STAT by index, without the read check
SHM_DEST = 0o1000        # mode bit: removal requested, waiting for the last detach
SHM_LOCKED = 0o2000      # mode bit: locked in memory with SHM_LOCK
COMMANDS = {IPC_RMID: "IPC_RMID", IPC_SET: "IPC_SET", IPC_STAT: "IPC_STAT",
            SHM_INFO: "SHM_INFO", SHM_STAT_ANY: "SHM_STAT_ANY"}


def declare(name: str, restype: Any, failed: Any, *, errno_decides: bool = False,
            expected: frozenset[int] = frozenset(), **params: Any) -> Any:
    """Declare libc's function `name` once: its parameters, named as in its man
    page, its return type, and the return value that means failure. With
    errno_decides, that value is also a valid result, and means failure only
    if errno is set: the caller sets errno to 0 first (ctypes.set_errno).
    A failure whose errno is in `expected` is an outcome, not an error: the
    call returns that errno (a function that returns 0 on success, such as
    sem_trywait(3) with EAGAIN, so that 0 still means it worked)."""
    function = getattr(libc, name)
    function.argtypes = list(params.values())
    function.restype = restype

    def check(result: Any, _function: Any, arguments: tuple) -> Any:
        # Compare with the exact failure value of the man page's RETURN VALUE
        # section, and read errno at once, before anything else can change it.
        if result == failed:
            err = ctypes.get_errno()
            if errno_decides and err == 0:
                return result
            if err in expected:
                return err
            raise OSError(err, os.strerror(err), show_call(name, params, arguments))
        return result

    function.errcheck = check
    return function


# A failure names the call as a C programmer would write it, such as
# shmget(key=0x46010004, size=4096, shmflg=IPC_CREAT|IPC_EXCL|0600). Keys
# and flags are shown by show_key and show_flags, beside the calls that take
# them (sections 2 and 3); a message needs them only once a call has failed.


def show_call(name: str, params: dict, arguments: tuple) -> str:
    """Write a call the way a C programmer would, to say which one failed."""
    shown = (f"{param}={show_argument(param, value)}" for param, value in zip(params, arguments))
    return f"{name}({', '.join(shown)})"


def show_argument(param: str, value: Any) -> str:
    """Show one argument: keys and addresses in hex, flags by name, modes in octal."""
    if param == "pathname":
        return repr(os.fsdecode(value))
    if param == "key":
        return show_key(value)
    if param == "proj_id":
        return hex(value)
    if param == "shmaddr":
        return hex(value) if value else "NULL"
    if param == "shmflg":
        return show_flags(value)
    if param == "cmd":
        return COMMANDS.get(value, str(value))
    if param == "buf":
        return "&buf" if value is not None else "NULL"
    if param == "sem":
        return hex(value.value)
    if param == "abs_timeout":
        return f"{{tv_sec={value._obj.tv_sec}, tv_nsec={value._obj.tv_nsec}}}"
    return str(value)


# --- 2. The key: ftok(3) --------------------------------------------------------------
#
# Both processes need the same key without talking first. ftok(3) derives it
# from a file that both can stat and a project id. glibc's formula:
#
#     key = (proj_id & 0xff) << 24 | (st_dev & 0xff) << 16 | (st_ino & 0xffff)
#
# Limits, stated where they bite: only 8 bits of the project id, 8 of the
# device and 16 of the inode survive, so two files can give the same key
# (then shmget finds someone else's segment: section 14 tells them apart);
# and a file that is deleted and re-created gets a new inode, so a new key.
#
# ftok returns a key_t, a signed int. With a project id of 0x80 or more the top
# bit is set and the key is negative, yet valid: only -1 means failure. The
# tutorial tested `< 0`, rejected its key 0x9400....., and printed errno,
# which nobody had set: "filed ftok:Success".
#
# Even -1 can be a key: project id 0xff, a device whose low byte is 0xff and
# an inode whose low 16 bits are 0xffff give 0xffffffff. glibc's ftok then
# returns -1 without setting errno. So errno is cleared before the call, and
# -1 with errno still 0 is taken as the key it is.

ftok = declare("ftok", ctypes.c_int, -1, errno_decides=True,
               pathname=ctypes.c_char_p, proj_id=ctypes.c_int)


def make_key(path: str, proj_id: int) -> int:
    """Return the key that ftok(3) derives from path and proj_id."""
    ctypes.set_errno(0)  # so that a key of -1 is told from a failure
    return ftok(os.fsencode(path), proj_id)


def ftok_formula(path: str, proj_id: int) -> str:
    """Spell out how glibc built the key for path and proj_id, from stat(2)."""
    st = os.stat(path)
    return (f"proj_id {proj_id & 0xFF:#04x} << 24 | st_dev {st.st_dev & 0xFF:#04x} << 16"
            f" | st_ino {st.st_ino & 0xFFFF:#06x}")


def show_key(key: int) -> str:
    """Show a key as ipcs does: 0x and eight hex digits, even when key_t is negative."""
    return f"0x{key & 0xFFFFFFFF:08x}"


# --- 3. Create or find: shmget(2) -----------------------------------------------------
#
# shmget(key, size, shmflg) returns a shmid: the key is the name the kernel
# files the segment under, the shmid is the handle every later call takes
# (and the number ipcs and ipcrm show). It is called in two ways:
#
#   create: IPC_CREAT | IPC_EXCL | mode. A new segment or EEXIST, never
#           someone else's old one, which could still be in use. mode gives
#           the permission bits; without it they are 0, as in the tutorial.
#           The size is rounded up to whole pages: 4097 bytes take two.
#   find:   flags 0. An existing segment or ENOENT, never a new one; the
#           tutorial's writer passed IPC_CREAT and, started first, made a
#           segment with mode 0. A size larger than the segment's is EINVAL;
#           0 accepts any size.

shmget = declare("shmget", ctypes.c_int, -1,
                 key=ctypes.c_int, size=ctypes.c_size_t, shmflg=ctypes.c_int)


def show_flags(flags: int) -> str:
    """Show shmget or shmat flags as IPC_CREAT|IPC_EXCL|0600, SHM_RDONLY or 0."""
    names = [name for name, bit in (("IPC_CREAT", IPC_CREAT), ("IPC_EXCL", IPC_EXCL),
                                    ("SHM_RDONLY", SHM_RDONLY)) if flags & bit]
    if flags & 0o777 or not names:
        names.append(show_mode(flags & 0o777))
    return "|".join(names)


def show_mode(mode: int) -> str:
    """Show permission bits as C's %#o does: 0600, 01600, or 0."""
    return f"0{mode:o}" if mode else "0"


# --- 4. Look at it: shmctl(2) IPC_STAT ------------------------------------------------
#
# shmctl(shmid, IPC_STAT, &buf) copies the kernel's description of a segment
# into a struct shmid_ds; this is what ipcs prints. Layouts for 64-bit Linux
# (x86_64 and aarch64 agree); the asserts stop us on anything else.


class ipc_perm(ctypes.Structure):
    """struct ipc_perm: who owns a segment and who may use it."""

    _fields_ = [
        ("key", ctypes.c_int),          # __key: the key given to shmget; 0 once removed
        ("uid", ctypes.c_uint),         # owner's user id
        ("gid", ctypes.c_uint),         # owner's group id
        ("cuid", ctypes.c_uint),        # creator's user id
        ("cgid", ctypes.c_uint),        # creator's group id
        ("mode", ctypes.c_uint),        # permission bits | SHM_DEST | SHM_LOCKED
        ("seq", ctypes.c_ushort),       # __seq: reuse count of the slot, part of shmid
        ("pad", ctypes.c_ushort),       # __pad2
        ("reserved1", ctypes.c_ulong),  # __glibc_reserved1
        ("reserved2", ctypes.c_ulong),  # __glibc_reserved2
    ]


class shmid_ds(ctypes.Structure):
    """struct shmid_ds: one segment as the kernel sees it."""

    _fields_ = [
        ("shm_perm", ipc_perm),          # ownership and permissions
        ("shm_segsz", ctypes.c_size_t),  # size in bytes, as asked (not rounded)
        ("shm_atime", ctypes.c_long),    # last shmat, seconds since the epoch; 0: never
        ("shm_dtime", ctypes.c_long),    # last shmdt; 0: never
        ("shm_ctime", ctypes.c_long),    # creation or last IPC_SET
        ("shm_cpid", ctypes.c_int),      # pid of the creator
        ("shm_lpid", ctypes.c_int),      # pid of the last shmat or shmdt
        ("shm_nattch", ctypes.c_ulong),  # processes attached right now
        ("reserved5", ctypes.c_ulong),   # __glibc_reserved5
        ("reserved6", ctypes.c_ulong),   # __glibc_reserved6
    ]


assert ctypes.sizeof(ipc_perm) == 48, "struct ipc_perm is 48 bytes on 64-bit Linux"
assert ctypes.sizeof(shmid_ds) == 112, "struct shmid_ds is 112 bytes on 64-bit Linux"

shmctl = declare("shmctl", ctypes.c_int, -1,
                 shmid=ctypes.c_int, cmd=ctypes.c_int, buf=ctypes.POINTER(shmid_ds))

# --- 5. Map and unmap: shmat(2), shmdt(2) ---------------------------------------------
#
# shmat maps the segment into our address space and returns where; shmaddr
# NULL lets the kernel choose. From then on, reading and writing it are plain
# memory accesses, with no system call and no copy through the kernel: that
# is the point of shared memory. nattch counts the processes attached.
#
# shmat returns a pointer, so its restype must be c_void_p (an int would cut
# the address to 32 bits), and it fails with (void *) -1, not NULL. shmdt
# returns an int, 0 or -1.

# The kernel maps whole pages, so a segment's size is rounded up to them
# (shmget(2)): what section 17's attach shows, and why 4097 bytes take two.
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

shmat = declare("shmat", ctypes.c_void_p, ctypes.c_void_p(-1).value,
                shmid=ctypes.c_int, shmaddr=ctypes.c_void_p, shmflg=ctypes.c_int)
shmdt = declare("shmdt", ctypes.c_int, -1, shmaddr=ctypes.c_void_p)

# --- 6. Remove: shmctl(2) IPC_RMID ----------------------------------------------------
#
# A segment outlives the processes that use it: it stays until someone
# removes it (or the machine reboots), which is why the tutorial's second run
# failed with EEXIST. shmctl(shmid, IPC_RMID, NULL) removes it. If processes
# are still attached, the kernel only marks it (SHM_DEST, "dest" in ipcs) and
# sets its key to IPC_PRIVATE, so nobody new can find it; the memory goes when
# the last one detaches. We could mark it right after creating it, so that
# even a crash frees it, but then processb could not find it by its key.
# Only the creator (or the owner, or root) may remove a segment.

# --- 7. The segment as one object -----------------------------------------------------


class Segment(contextlib.AbstractContextManager):
    """A segment known by its shmid. Make one with create() or find(), then
    attach(), detach(), remove(). As a context manager it detaches on exit,
    and also removes the segment if this process created it."""

    def __init__(self, shmid: int, key: int, created: bool) -> None:
        self.shmid = shmid
        self.key = key
        self.created = created                # only the creator removes
        self.address: int | None = None       # where shmat mapped it
        self.memory: memoryview | None = None  # the mapped bytes

    @classmethod
    def create(cls, key: int, size: int, mode: int) -> Segment:
        """Create a new segment at key; FileExistsError if the key has one."""
        return cls(shmget(key, size, IPC_CREAT | IPC_EXCL | mode), key, created=True)

    @classmethod
    def find(cls, key: int, size: int = 0) -> Segment:
        """Find the segment at key; FileNotFoundError if there is none."""
        return cls(shmget(key, size, 0), key, created=False)

    def status(self) -> shmid_ds:
        """Return the kernel's struct shmid_ds for this segment (IPC_STAT)."""
        status = shmid_ds()
        shmctl(self.shmid, IPC_STAT, ctypes.byref(status))
        return status

    def attach(self, readonly: bool = False) -> memoryview:
        """Map the segment and return its bytes as a memoryview."""
        size = self.status().shm_segsz  # shmat returns where, not how much
        self.address = shmat(self.shmid, None, SHM_RDONLY if readonly else 0)
        memory = memoryview((ctypes.c_char * size).from_address(self.address)).cast("B")
        self.memory = memory.toreadonly() if readonly else memory
        return self.memory

    def detach(self) -> None:
        """Unmap the segment. Views of its memory must not be used after this."""
        assert self.memory is not None and self.address is not None, "not attached"
        self.memory.release()
        self.memory = None
        shmdt(self.address)
        self.address = None

    def remove(self) -> None:
        """Ask the kernel to remove the segment once the last process detaches."""
        shmctl(self.shmid, IPC_RMID, None)

    def __exit__(self, *exc_info: object) -> None:
        # Remove first, while still attached: with kernel.shm_rmid_forced=1
        # (see shmctl(2)), the last detach destroys a segment at once, and
        # IPC_RMID after it would find nothing.
        if self.created:
            self.remove_unless_gone()
        if self.address is not None:
            self.detach()
            log.info("detached from shmid %d (shmdt)", self.shmid)

    def remove_unless_gone(self) -> None:
        """Remove the segment, warning (not failing) if someone removed it first."""
        try:
            self.remove()
        except OSError as err:
            if err.errno not in (errno.EINVAL, errno.EIDRM):
                raise
            log.warning("shmid %d was already removed by someone else (ipcrm?)", self.shmid)
            return
        log.info("removed shmid %d (IPC_RMID)", self.shmid)


# ======================================================================================
# Part II. A channel between two processes
#
# Shared memory moves bytes, and nothing else: who may write, when a message
# is ready and when it has been read are ours to settle. Section 8 is the
# tutorial's answer, one C string and one FIFO, the smallest program that
# talks, and the way it loses lines; sections 9 to 11 are ours, each part
# brought in by the failure it prevents. Their errors (Refused) and their
# safety under signals and crashes are Part III.
# ======================================================================================


# --- 8. The tutorial's channel: one C string, one FIFO --------------------------------
#
# The smallest program that talks through a segment is the tutorial's last
# pair, a.cc and b.cc; --seed-protocol makes processa and processb speak it,
# so that they talk to those C++ programs too:
#
#   the segment   one NUL-terminated string at offset 0, as fgets(3) leaves
#                 it: with its newline, at most size - 1 bytes
#   the FIFO      ./myfifo (in the current directory), mode 0664; the writer
#                 writes one byte per line, and closes it at the end
#
# The byte says "a line is there", so the reader no longer prints the same
# line again and again, as the tutorial's first reader did (lesson 8). But
# nothing says "I have printed it": a writer faster than its reader, which
# is any writer fed by a pipe, overwrites lines before they are printed, and
# lesson 10 counts them. Sections 9 to 11 are the repair: a length for each
# message, slots that the writer may not fill again until the reader hands
# them back, and a way for each side to learn that the other has gone.


def read_c_string(memory: memoryview) -> bytes:
    """Return the NUL-terminated string at offset 0 (all of memory if no NUL)."""
    # A page at a time, up to the NUL: reading a page of a segment makes the
    # kernel give it memory, so reading all of a large one would fill it.
    for start in range(0, len(memory), PAGE_SIZE):
        end = bytes(memory[start:start + PAGE_SIZE]).find(b"\0")
        if end >= 0:
            return bytes(memory[:start + end])
    return bytes(memory)


def write_c_string(memory: memoryview, text: bytes) -> None:
    """Put text at offset 0 as a NUL-terminated string; text must leave room for the NUL."""
    assert len(text) < len(memory), "no room for the terminating NUL"
    memory[:len(text)] = text
    memory[len(text)] = 0


# --- 9. The message layout ------------------------------------------------------------
#
# The tutorial's segment held one C string: no length, no way to send more
# than 4096 bytes, no way to tell our segment from anyone else's. Ours starts
# with a header and is cut into slots of equal size. Each slot holds one
# frame: a frame header, then records, each a record header and its bytes.
#
#   offset 0           128                 128 + slot_size
#   +------------------+-------------------+-------------------+----
#   | segment header   | slot 0            | slot 1            | ...
#   +------------------+-------------------+-------------------+----
#                      | frame header | record | record | ...  |
#                      0              64                       slot_size
#
#   segment header (HEADER at 0, 128 bytes reserved), written by processa:
#     magic       8 bytes  b"shmm.py3": this program made it; layout 3
#     slots       u32      number of slots
#     slot_size   u32      bytes per slot, frame header included
#     writer_pid  i32      the processb that holds the channel; 0: none yet
#     stream      u32      what the records carry: LINES or BYTES (--raw)
#     (up to 64: unused, 0)
#     full        sem_t    at 64, 32 bytes: how many slots hold a frame
#     free        sem_t    at 96, 32 bytes: how many slots the writer may fill
#                          (the two counts: section 11)
#   frame header (FRAME, 64 bytes reserved), written by processb:
#     magic       4 bytes  b"frm2"
#     length      u32      bytes of records in this frame
#     flags       u32      END: the writer's last frame; it has sent everything
#     seq         u64      frame number, from 0: frame n is in slot n % slots
#   record header (RECORD, 8 bytes), then `length` bytes:
#     length      u32      bytes in this record
#     flags       u32      MORE: the message goes on in the next record
#
# A frame carries as many records as fit, so that many small messages cost
# one frame, one count each way and (in processa) one write(2). A message
# longer than what is left of a frame goes on in the next frames, each piece
# but the last flagged MORE. In LINES streams a record holds whole lines,
# newline included, or part of one long line (MORE); in BYTES streams it
# holds bytes, with no boundaries that matter. The writer ends with a frame
# flagged END: a reader that meets end of file without it knows that the
# stream was cut short.
#
# The reader checks every header (magic, seq, lengths that fit the frame
# and the slot) before it touches the bytes behind it, so a corrupt or
# foreign header can never make it read past the end of the segment.
# Integers are in the machine's own byte order: the segment never leaves
# this machine.

HEADER = struct.Struct("=8sIIiI")  # magic, slots, slot_size, writer_pid, stream
HEADER_SIZE = 128                  # bytes reserved for it and the two counts at offset 0
MAGIC = b"shmm.py3"
OUR_MAGIC = b"shmm.py"             # every layout's magic: this and its digit (section 14)
FULL_AT = 64                       # offset of the count of full slots (a sem_t)
FREE_AT = 96                       # offset of the count of free slots (a sem_t)
FRAME = struct.Struct("=4sIIQ")    # magic, length, flags, seq
FRAME_SIZE = 64                    # bytes reserved for it: records start on a cache line
FRAME_MAGIC = b"frm2"
END = 1                            # frame flag: the writer's last frame
RECORD = struct.Struct("=II")      # length, flags
MORE = 1                           # record flag: the message goes on in the next record
LINES = 1                          # stream: whole lines, each ending in a newline
BYTES = 2                          # stream: bytes as they came (--raw)
STREAM_NAMES = {LINES: "lines", BYTES: "bytes (--raw)"}


class Layout(NamedTuple):
    """What the segment header says."""

    slots: int        # number of slots
    slot_size: int    # bytes per slot, frame header included
    writer_pid: int   # the processb that holds the channel; 0: none yet
    stream: int       # LINES or BYTES


def slot_size_for(segment_size: int, slots: int) -> int:
    """Return the size of each slot: the space after the header, shared out and
    rounded down to whole cache lines."""
    return (segment_size - HEADER_SIZE) // slots // 64 * 64


def segment_size(slots: int, payload: int = 64) -> int:
    """Return the segment size that gives each of `slots` slots room for one
    record of `payload` bytes (by default the least a slot may hold: 64)."""
    return HEADER_SIZE + slots * (FRAME_SIZE + -(-(RECORD.size + payload) // 64) * 64)


def default_size(slots: int) -> int:
    """Return processa's segment size for `slots` slots when --size is not
    given: the default segment, and a slot as large as its one for each more."""
    return comm.SEGMENT_SIZE + (slots - 1) * slot_size_for(comm.SEGMENT_SIZE, 1)


def write_header(memory: memoryview, slots: int, stream: int) -> int:
    """Lay out a fresh segment for `slots` slots; return the slot size."""
    slot_size = slot_size_for(len(memory), slots)
    HEADER.pack_into(memory, 0, MAGIC, slots, slot_size, 0, stream)
    return slot_size


def read_header(memory: memoryview) -> Layout:
    """Return the layout of a segment processa laid out."""
    magic, *fields = HEADER.unpack_from(memory, 0)
    layout = Layout(*fields)
    if magic != MAGIC:
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"the segment has no {MAGIC.decode()} header (it starts with {magic!r}):"
                      " it was not made by this version of processa; pick another key with"
                      " --proj-id")
    if (layout.slots < 1 or layout.slot_size < FRAME_SIZE + RECORD.size + 1
            or HEADER_SIZE + layout.slots * layout.slot_size > len(memory)
            or layout.stream not in STREAM_NAMES):
        raise CorruptFrame(f"the segment header says {layout.slots} slots of"
                           f" {layout.slot_size} bytes carrying stream {layout.stream}, which"
                           f" do not fit in its {len(memory)} bytes")
    return layout


def claim_header(memory: memoryview, writer_pid: int) -> None:
    """Record in the header which processb holds the writing end."""
    magic, slots, slot_size, _, stream = HEADER.unpack_from(memory, 0)
    HEADER.pack_into(memory, 0, magic, slots, slot_size, writer_pid, stream)


# --- 10. The FIFOs --------------------------------------------------------------------
#
# Section 8's channel loses lines because nothing tells its writer that the
# reader is done. The repair is two counts, "slots full" and "slots free":
# the writer never fills a slot that the reader has not freed, and the
# reader never reads one that the writer has not filled; with one slot this
# is the tutorial's lock-step, completed. The counts live in the segment
# itself (section 11), so that handing a frame over between two running
# processes is a few stores and no system call at all.
#
# The tutorial's FIFO stays, as two, for what a count in memory cannot do:
#   the handshake  processb finds a live processa by opening notify (ENXIO:
#                  nobody listens), and says hello with one byte on it
#   one writer     processb holds an flock(2) on notify (processb.py section 3)
#   the death notice  a count cannot tell that the other side has died;
#                  a FIFO can. When processb has gone, processa's notify
#                  reports POLLHUP (no writer left); when processa has gone,
#                  processb's ack does (processa was its only writer). Both
#                  close by the kernel on exit, even after kill -9.
# Nothing else is written to them: the frames are counted in the segment.
#
# processa makes the FIFOs in /tmp/shmm-UID, a directory that only its own
# user can write, named after the key, so that processb finds them from the
# key alone, from any directory, and nobody else can replace them. /tmp is
# open to all, so the directory is checked: ours, mode 0700, not a symlink.
# Another user can still make /tmp/shmm-UID first, and the sticky bit of
# /tmp keeps us from removing it: SHMM_FIFO_DIR then names another directory
# (for both programs), which must pass the same checks.
#
# The handshake: accept_writer is processa's side, connect_writer (with
# processb's take_writer_lock) the writer's. An open(2) of a FIFO waits for
# the other end unless it is made with O_NONBLOCK, and none of ours waits:
#
#   processa                                 processb
#   1. notify, read, O_NONBLOCK, and ack,
#      read and write: at once; from now
#      on processa is "listening"
#                                            2. ack, read, O_NONBLOCK: at once
#                                            3. notify, write, O_NONBLOCK: works
#                                                only if a reader has it open;
#                                                ENXIO: no processa listens
#                                            4. flock(notify): the only writer;
#                                                its pid into the segment header,
#                                                then one byte on notify: hello
#   5. poll(notify) until the hello    <---
#      comes: serve the writer
#
# A writer that leaves between 3 and 4 (refused: another one writes, or its
# --raw differs) closes notify without a word; processa then waits on (5).
# processa holds ack for reading too, so that opening it never waits for a
# processb; processb still learns that processa has gone when ack has no
# writer left. While it waits, processa looks every WAKE_SECONDS at its
# FIFOs: one removed by hand (or replaced) can no longer bring a processb,
# and waiting for one would be waiting for ever.
#
# So a FIFO "has a reader" exactly while a processa listens on it, and an
# O_NONBLOCK open for writing tells, without waiting: that is how processb
# finds processa (ENOENT or ENXIO: not yet), and how a processa tells a
# leftover FIFO, which it may replace, from one that another processa is
# reading, which it must not. Making and replacing happen under an flock(2)
# of the directory, so two processa starting at once cannot both decide
# that the same FIFO is a leftover. At the end, processa unlinks each FIFO
# only if it is still the one it made (same st_dev and st_ino), and does so
# while it still reads notify, so that no other processa can take its FIFOs
# for leftovers in the meantime.
#
# Closing a FIFO is how each side learns that the other has gone: poll(2)
# reports POLLHUP, read(2) returns 0 (end of file), write(2) fails with EPIPE.

def fifo_directory() -> str:
    """Return the directory where this user's FIFOs live: $SHMM_FIFO_DIR, or
    /tmp/shmm-UID."""
    named = os.environ.get(comm.FIFO_DIR_VARIABLE)
    if not named:
        return comm.FIFO_DIR.format(uid=os.getuid())
    if not os.path.isabs(named):  # each program would find it from its own directory
        raise Refused(ExitCode.USAGE, f"{comm.FIFO_DIR_VARIABLE}={named!r} must be an absolute"
                      " path, the same for processa and processb")
    return os.path.normpath(named)  # no trailing slash, which would let lstat follow a link


NAME_A_DIRECTORY = (f"Name a directory of your own with {comm.FIFO_DIR_VARIABLE}=DIR, for"
                    " processa and processb alike (made with mode 0700 if missing; its parent"
                    " must be an existing directory)")


def fifo_paths(key: int) -> tuple[str, str]:
    """Return the paths of the notify and ack FIFOs for key."""
    directory = fifo_directory()
    return (os.path.join(directory, comm.NOTIFY_FIFO.format(key=show_key(key))),
            os.path.join(directory, comm.ACK_FIFO.format(key=show_key(key))))


def accept_writer(cleanup: contextlib.ExitStack, key: int, memory: memoryview) -> int:
    """The reader's side of the handshake: listen (step 1), then wait for a
    writer to say hello (step 5); return notify_fd, whose hang-up says that
    the writer has gone. The cleanup unlinks both FIFOs if they are still
    ours, and then closes them: until then, our ack fd is what tells processb
    that we are still there."""
    with signals_deferred():  # the FIFOs exist only once their removal is registered
        notify_fd, made = listen(cleanup, key)
    log.info("waiting for processb on %s", made[0].path)
    wait_for_sender(notify_fd, made, memory)
    return notify_fd


def connect_writer(key: int) -> tuple[int, int]:
    """Open processa's FIFOs as the writer (steps 3 and 4 of the handshake),
    without waiting: return (notify_fd, ack_fd), or raise FileNotFoundError or
    ENXIO while no processa listens."""
    notify_path, ack_path = fifo_paths(key)
    check_private(os.path.dirname(notify_path))
    ack_fd = os.open(ack_path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        notify_fd = os.open(notify_path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        os.close(ack_fd)
        raise
    os.set_blocking(ack_fd, True)
    os.set_blocking(notify_fd, True)
    return notify_fd, ack_fd


def check_private(directory: str) -> None:
    """Refuse a FIFO directory that is a symlink, not ours, or open to others."""
    info = os.lstat(directory)
    if stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077:
        return
    named = bool(os.environ.get(comm.FIFO_DIR_VARIABLE))
    kind = file_kind(info.st_mode)
    if named:  # not ours to change: never advise chmod or removal of it
        why = (f"{comm.FIFO_DIR_VARIABLE} must name a private directory of your own, and this"
               f" is {kind}{' open to others' if stat.S_ISDIR(info.st_mode) else ''}."
               f" {NAME_A_DIRECTORY}")
    elif info.st_uid != os.getuid():
        why = f"someone else made it, and in /tmp only they can remove it. {NAME_A_DIRECTORY}"
    elif stat.S_ISDIR(info.st_mode):
        why = f"it is ours but open to others: run chmod 700 {directory}"
    else:
        why = f"it is {kind}, not a directory: move it away"
    raise Refused(ExitCode.FAILURE,
                  f"{directory} must be a directory of uid {os.getuid()} with mode 0700 (it is"
                  f" uid {info.st_uid}, mode {stat.filemode(info.st_mode)}); {why}")


@contextlib.contextmanager
def locked(directory: str) -> Iterator[None]:
    """Hold an exclusive flock(2) on directory for the length of the block."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def has_reader(path: str) -> bool:
    """Tell whether path is a FIFO that some process has open for reading."""
    try:
        if not stat.S_ISFIFO(os.lstat(path).st_mode):
            return False
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW))
    except FileNotFoundError:
        return False
    except OSError as err:
        if err.errno != errno.ENXIO:
            raise
        return False
    return True


WAKE_SECONDS = 1.0  # how often a processa that waits for its writer looks at its FIFOs


class Fifo(NamedTuple):
    """A FIFO that processa made, to know it again at the moment it acts on it."""

    path: str
    identity: tuple[int, int]  # (st_dev, st_ino)


def listen(cleanup: contextlib.ExitStack, key: int) -> tuple[int, list[Fifo]]:
    """Make the notify and ack FIFOs for key and open them (step 1 of the
    handshake); return (notify_fd, the FIFOs made). The cleanup unlinks each
    FIFO, if it is still ours, and then closes the fds."""
    directory = make_fifo_directory()
    fds: list[int] = []
    cleanup.callback(close_all, fds)  # last, after the unlinks registered below
    made: list[Fifo] = []
    with locked(directory):
        for path in fifo_paths(key):
            if has_reader(path):
                raise Refused(ExitCode.SEGMENT_CONFLICT,
                              f"{path} is in use: another processa listens at key"
                              f" {show_key(key)} (was its segment removed by hand?); stop it"
                              " first, or pick another key with --proj-id")
        for path in fifo_paths(key):
            try:
                made.append(Fifo(path, make_fifo(path, comm.FIFO_MODE)))
            except OSError as err:
                raise Refused(ExitCode.FAILURE, f"{describe(err)}: uid {os.getuid()} cannot"
                              f" make FIFOs in {directory}. {NAME_A_DIRECTORY}") from None
            cleanup.callback(unlink_if_ours, *made[-1])
            os.chmod(path, comm.FIFO_MODE)  # whatever the umask took away
        notify, ack = made
        fds.append(os.open(notify.path, os.O_RDONLY | os.O_NONBLOCK))
        # ack: never written, only held, so that processb sees POLLHUP once
        # we have gone. O_RDWR never waits: we are a reader too.
        fds.append(os.open(ack.path, os.O_RDWR))
    return fds[0], made


def make_fifo_directory() -> str:
    """Make the FIFO directory if it is missing, and check that it is private;
    return its path."""
    directory = fifo_directory()
    try:
        os.mkdir(directory, 0o700)
        os.chmod(directory, 0o700)  # whatever the umask took away
    except FileExistsError:
        pass  # ours from an earlier run, or a plant: check_private tells
    except OSError as err:
        raise Refused(ExitCode.FAILURE, f"{describe(err)}: the FIFO directory cannot be made."
                      f" {NAME_A_DIRECTORY}") from None
    check_private(directory)
    return directory


def close_all(fds: list[int]) -> None:
    """Close each file descriptor in fds."""
    for fd in fds:
        os.close(fd)


def wait_for_sender(notify_fd: int, made: list[Fifo], memory: memoryview) -> None:
    """Wait until a writer has claimed the channel and said hello; every
    WAKE_SECONDS, make sure that our FIFOs are still there to be found."""
    # A processb that was refused (another one writes, the modes differ)
    # opens and closes notify without a word; so does another processa that
    # checks whether we listen. Neither is our writer: wait for the next one.
    # The FIFO keeps reporting the hang-up until a new writer comes, so we
    # open it afresh onto the same fd number.
    waiter = select.poll()
    waiter.register(notify_fd, select.POLLIN)
    while True:
        ready = waiter.poll(WAKE_SECONDS * 1000)
        check_still_ours(made)
        if not ready:
            continue
        if ready[0][1] & select.POLLIN or read_header(memory).writer_pid:
            return
        log.info("a writer opened %s and closed it without sending; still waiting", made[0].path)
        fresh = os.open(made[0].path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
        os.dup2(fresh, notify_fd)
        os.close(fresh)
        check_still_ours(made)  # what we opened is the FIFO we made


def check_still_ours(made: list[Fifo]) -> None:
    """Refuse to wait on if a FIFO we made was removed or replaced: no
    processb could find us any more."""
    for path, identity in made:
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            info = None
        if info is None or (info.st_dev, info.st_ino) != identity:
            raise Refused(ExitCode.FAILURE, f"{path} was removed or replaced while processa"
                          " waited (by hand?), so no processb can find it; start processa"
                          " again")


def make_fifo(path: str, mode: int) -> tuple[int, int]:
    """Make a FIFO at path, replacing one that nobody reads (a crashed run left
    it); return its (st_dev, st_ino), to know it again."""
    try:
        mkfifo(path, mode)
    except FileExistsError:
        info = os.lstat(path)
        if not stat.S_ISFIFO(info.st_mode):
            raise Refused(ExitCode.FAILURE, f"{path} exists and is {file_kind(info.st_mode)},"
                          " not a FIFO; move it away") from None
        if info.st_uid != os.geteuid():
            raise Refused(ExitCode.FAILURE, f"{path} is a FIFO of {user_name(info.st_uid)}"
                          f" (uid {info.st_uid}), not ours to replace; let them remove it, or"
                          " start from another directory") from None
        log.warning("replacing %s, left by a reader that did not clean up", path)
        try:
            os.unlink(path)
        except OSError as err:
            raise OSError(err.errno, err.strerror, f"unlink(pathname={path!r})") from None
        mkfifo(path, mode)
    info = os.lstat(path)
    return info.st_dev, info.st_ino


def mkfifo(path: str, mode: int) -> None:
    """Make a FIFO with mkfifo(3); a failure names the call, as ours do (the
    OSError of os.mkfifo names no file)."""
    try:
        os.mkfifo(path, mode)
    except OSError as err:
        raise OSError(err.errno, err.strerror,
                      f"mkfifo(pathname={path!r}, mode={show_mode(mode)})") from None


def file_kind(mode: int) -> str:
    """Name the kind of file that st_mode describes: 'a regular file', 'a symlink'."""
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "an odd file")


def unlink_if_ours(path: str, identity: tuple[int, int]) -> None:
    """Unlink the FIFO at path if it is still the one we made; warn if not."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        log.warning("%s was removed while we ran (by hand?): nothing to remove", path)
        return
    if (info.st_dev, info.st_ino) != identity:
        log.warning("%s is no longer the FIFO we made: left it alone", path)
        return
    os.unlink(path)
    log.info("removed %s", path)


# --- 11. Sending and receiving --------------------------------------------------------
#
# Both ends walk the slots in the same order: frame n lives in slot n % slots.
# Two counts in the segment header say how far each of them may go:
#   full  processb adds one per frame it fills, processa takes one per frame it reads
#   free  processa adds one per slot it hands back, processb takes one per slot it fills
# processa sets them up (full 0, free = slots) before any writer can
# attach. With one slot (the default) this is the tutorial's lock-step,
# completed: fill, count, wait for the slot back. A frame carries as many
# messages as fit, so a count is paid for once a frame, not once a message.
#
# A count is a semaphore: a number that never goes below 0, with two
# operations. sem_post(3) adds one, and wakes a process that waits;
# sem_wait(3) takes one away, waiting while there is none; sem_trywait(3)
# fails with EAGAIN instead of waiting, and sem_timedwait(3) gives up at a
# deadline (ETIMEDOUT). sem_init(3) with pshared 1 makes one that works
# between processes, when it lives in memory they share, as ours do in the
# segment header (sem_overview(7)).
#
# System V has semaphores too (semget(2), semop(2)), beside its shared
# memory. We do not use them: every semop(2) is a system call, even when
# nobody has to wait, and a semaphore set outlives a crash as a segment
# does, one more thing to clean up. glibc's POSIX semaphore is 32 bytes of
# our own memory: sem_post is an atomic add, which makes a system call
# (futex(2) FUTEX_WAKE) only if someone sleeps on the count; sem_trywait is
# an atomic compare-and-swap; only a wait that must sleep calls futex(2)
# FUTEX_WAIT. So while both sides run, a hand-off is a few stores and
# atomics, and no system call at all (test_shm.sh counts them, under strace).
#
# Memory order. A CPU may make its stores visible to another CPU out of
# order (aarch64 does; the compiler may reorder them anywhere): processa
# could see the count before the frame it counts. POSIX rules that out: the
# Base Definitions, 4.12 "Memory Synchronization", list sem_post, sem_wait,
# sem_trywait and sem_timedwait among the functions that synchronize memory.
# glibc keeps that promise with a release in sem_post and an acquire in the
# waits (nptl/sem_post.c, nptl/sem_waitcommon.c): what processb stored in a
# slot before its post is there for processa after its wait, and what
# processa read out of a slot was read before processb may refill it. No
# wake-up is lost: a post before the wait leaves 1, and the wait takes it.
#
# Waiting. A count at 0 usually means that the other side is a few
# microseconds from its next post, while waking a sleeping process costs
# tens (another CPU must be interrupted). So, as adaptive mutexes do, a
# waiter spins on sem_trywait a little before it sleeps (Count.wait). Only
# with more than one CPU to run on (on one, spinning would hold back the
# very process we wait for), and only about as long as a hand-off usually
# takes: the budget doubles when spinning paid, or a little more would have,
# up to SPIN_MOST, and halves when the other side was far away. Under load,
# when the other side is not running, spins fail, the budget shrinks, and
# we sleep rather than take the CPU it needs.
#
# A count cannot say that the other side has died: sem_wait for a processb
# killed by kill -9 would wait for ever. So a waiter sleeps in
# sem_timedwait for SLEEP_LEAST, growing to SLEEP_MOST, and between sleeps
# asks poll(2) whether its FIFO hung up (section 10). sem_timedwait takes an
# absolute deadline on CLOCK_REALTIME (a clock set back during a sleep
# stretches that one sleep). A signal ends the sleep with EINTR; Python runs
# its handler as soon as the call returns (a stop signal raises
# Interrupted there), so on EINTR we simply wait again.
#
# Who destroys the counts: processa, once its writer has hung up, because
# then nobody can be waiting on them (POSIX leaves destroying a semaphore
# that someone waits on undefined; processb closes notify only after its
# last count). On any other way out, a signal or an error, processa leaves
# them: a processb may be asleep on them, and they go with the segment.
#
# What the counts trust: whoever may write the segment, its own user (or,
# with --mode 0666, everyone). Garbage in a sem_t makes glibc's futex(2)
# call fail in a way it does not expect, and glibc then aborts the process
# (SIGABRT, "The futex facility returned an unexpected error code"), before
# any cleanup: the next processa, or `make clean`, removes what it left. A
# process that takes a count for itself leaves both sides waiting for ever
# (the reader for a frame that never comes). The segment's mode is what
# keeps others out.

MAX_SLOTS = 2**31 - 1  # slots at most: SEM_VALUE_MAX (<limits.h>), the most a count holds
SPIN_MOST = 100e-6     # seconds a waiter spins at most before it sleeps
SPIN_LEAST = 1e-6      # seconds it still spins when spinning has stopped paying
SLEEP_LEAST = 0.01     # seconds of a waiter's first sleep before it looks for a hang-up
SLEEP_MOST = 0.1       # seconds of its longest: a dead peer is noticed within this


class timespec(ctypes.Structure):
    """struct timespec: a point in time, here sem_timedwait's deadline."""

    _fields_ = [("tv_sec", ctypes.c_long),   # seconds since the epoch (CLOCK_REALTIME)
                ("tv_nsec", ctypes.c_long)]  # and nanoseconds, 0 to 999999999


# The sem_t * is passed as a c_void_p, the address of the sem_t in the
# segment, built once: ctypes converts it faster than a POINTER to a
# structure, and sem_post and sem_trywait are the channel's hot path.

sem_init = declare("sem_init", ctypes.c_int, -1,
                   sem=ctypes.c_void_p, pshared=ctypes.c_int, value=ctypes.c_uint)
sem_destroy = declare("sem_destroy", ctypes.c_int, -1, sem=ctypes.c_void_p)
sem_post = declare("sem_post", ctypes.c_int, -1, sem=ctypes.c_void_p)
sem_trywait = declare("sem_trywait", ctypes.c_int, -1, expected=frozenset({errno.EAGAIN}),
                      sem=ctypes.c_void_p)
sem_timedwait = declare("sem_timedwait", ctypes.c_int, -1,
                        expected=frozenset({errno.ETIMEDOUT, errno.EINTR}),
                        sem=ctypes.c_void_p, abs_timeout=ctypes.POINTER(timespec))


def sem_in(memory: memoryview, offset: int) -> ctypes.c_void_p:
    """Return the address of the sem_t at offset in memory, as the sem_* calls take it."""
    # c_char.from_buffer exports the view only until it is freed, at once:
    # what we keep is the address, so that shmdt can unmap the segment later.
    return ctypes.c_void_p(ctypes.addressof(ctypes.c_char.from_buffer(memory, offset)))


def init_counts(memory: memoryview, slots: int) -> None:
    """Set up the counts of a fresh segment: no slot full, every slot free."""
    sem_init(sem_in(memory, FULL_AT), 1, 0)
    sem_init(sem_in(memory, FREE_AT), 1, slots)


def destroy_counts(memory: memoryview) -> None:
    """Destroy the counts, once nobody can be waiting on them."""
    sem_destroy(sem_in(memory, FULL_AT))
    sem_destroy(sem_in(memory, FREE_AT))


class Count:
    """One of the two counts in the segment header, and how this side waits on it."""

    def __init__(self, memory: memoryview, offset: int, hangup_fd: int) -> None:
        self.sem = sem_in(memory, offset)         # built once: every call takes it
        self.deadline = timespec()                # sem_timedwait's, rewritten per sleep
        self.deadline_ref = ctypes.byref(self.deadline)
        self.hangup = select.poll()               # the FIFO that tells the other side has gone
        self.hangup.register(hangup_fd, 0)        # no events asked for: POLLHUP still comes
        self.spins = len(os.sched_getaffinity(0)) > 1  # spin at all: only with 2 CPUs or more
        self.spin = SPIN_MOST if self.spins else 0.0  # seconds to spin next time

    def post(self) -> None:
        """Add one (sem_post)."""
        sem_post(self.sem)

    def trywait(self) -> bool:
        """Take one if there is one, without waiting (sem_trywait); tell whether we did."""
        return not sem_trywait(self.sem)

    def wait(self) -> bool:
        """Take one, spinning, then sleeping, until there is one; return False if
        the other side hung up and left none."""
        sem, trywait, clock = self.sem, sem_trywait, time.perf_counter  # locals: the spin is hot
        if not trywait(sem):
            return True  # there was one: no clock read, no system call
        started = clock()
        until = started + self.spin
        while clock() < until:
            if not trywait(sem):
                self.spin = min(SPIN_MOST, self.spin * 2)
                return True
        if not self.sleep():
            return False
        if self.spins:  # would a spin a little longer have caught it?
            if clock() - started < SPIN_MOST:
                self.spin = min(SPIN_MOST, self.spin * 2)
            else:
                self.spin = max(SPIN_LEAST, self.spin / 2)
        return True

    def sleep(self) -> bool:
        """Sleep in sem_timedwait until there is one, and take it; return False
        if the other side hung up and left none."""
        seconds = SLEEP_LEAST
        while True:
            deadline = time.time_ns() + int(seconds * 1e9)
            self.deadline.tv_sec, self.deadline.tv_nsec = divmod(deadline, 1_000_000_000)
            outcome = sem_timedwait(self.sem, self.deadline_ref)
            if not outcome:
                return True
            if outcome == errno.ETIMEDOUT:
                if self.hangup.poll(0):
                    return self.trywait()  # what it counted before it went still counts
                seconds = min(SLEEP_MOST, seconds * 2)
            # EINTR: a signal came, and its handler has run: wait again


class Ring:
    """The slots of a segment, taken in turn, and the two counts."""

    def __init__(self, memory: memoryview, slots: int, slot_size: int, hangup_fd: int) -> None:
        self.memory = memory
        self.slots = slots
        self.slot_size = slot_size
        self.capacity = slot_size - FRAME_SIZE  # bytes of records per frame
        self.full = Count(memory, FULL_AT, hangup_fd)
        self.free = Count(memory, FREE_AT, hangup_fd)
        self.seq = 0              # number of the next frame
        self.start = HEADER_SIZE  # where its slot starts: frame n is in slot n % slots
        self.last = HEADER_SIZE + (slots - 1) * slot_size  # where the last slot starts
        # (Writer and Reader move on to the next slot in their own hot code,
        # with no call: seq + 1, and start + slot_size or, after the last, back
        # to the first.)


class Writer(Ring):
    """processb's end: put messages into frames, frames into slots, and count them.

    send() gathers messages into the open frame; reserve() and commit() let a
    caller fill a frame in place (processb reads stdin straight into it).
    flush() sends the open frame when there is nothing more to send for now,
    and close() ends the stream."""

    def __init__(self, memory: memoryview, slots: int, slot_size: int, notify_fd: int,
                 ack_fd: int) -> None:
        super().__init__(memory, slots, slot_size, ack_fd)  # ack hangs up when processa goes
        self.fill = 0                      # bytes of records in the open frame
        self.held = False                  # the open frame's slot is taken from the free count
        try:
            os.write(notify_fd, b"h")      # hello: the handshake's last step (section 10)
        except BrokenPipeError:
            raise PeerGone("processa has gone away (the notify FIFO has no reader)") from None

    def send(self, message: bytes | memoryview) -> None:
        """Add a message to the open frame; one longer than what is left goes on
        in the next frames, as records flagged MORE."""
        size = len(message)
        if size <= self.capacity - self.fill - RECORD.size:
            self._record(message, 0)  # the common case: it fits in the open frame
            return
        if self.fill and size <= self.capacity - RECORD.size:
            self._publish()  # it fits whole in a fresh frame
            self._record(message, 0)
            return
        view = memoryview(message)
        while True:
            room = self.capacity - self.fill - RECORD.size
            if len(view) <= room:
                self._record(view, 0)
                return
            if self.fill and len(view) <= self.capacity - RECORD.size:
                self._publish()  # it fits whole in a fresh frame
                continue
            self._record(view[:room], MORE)
            view = view[room:]

    def reserve(self) -> memoryview:
        """Return the room of a fresh frame for one record, to be filled in place."""
        if self.fill:
            self._publish()
        if not self.held:
            self._wait_for_free_slot()
        start = self.start + FRAME_SIZE + RECORD.size
        return self.memory[start:start + self.capacity - RECORD.size]

    def commit(self, length: int, more: bool = False) -> None:
        """Send the first length bytes of the reserved room as one record."""
        RECORD.pack_into(self.memory, self.start + FRAME_SIZE, length, MORE if more else 0)
        self.fill = RECORD.size + length
        self._publish()

    def flush(self) -> None:
        """Send the open frame, if it holds anything."""
        if self.fill:
            self._publish()

    def close(self) -> None:
        """Send the END frame, then wait until the reader has taken every frame."""
        self.flush()
        if not self.held:
            self._wait_for_free_slot()
        self._publish(END)
        for _ in range(self.slots):  # every slot back: the reader has taken every frame
            self._wait_for_free_slot()

    def _record(self, piece: bytes | memoryview, flags: int) -> None:
        """Copy one record into the open frame, opening one if none is."""
        if not self.held:
            self._wait_for_free_slot()
        size = len(piece)
        at = self.start + FRAME_SIZE + self.fill
        memory = self.memory
        RECORD.pack_into(memory, at, size, flags)
        at += RECORD.size
        memory[at:at + size] = piece
        self.fill = fill = self.fill + RECORD.size + size
        if fill >= self.capacity - RECORD.size:
            self._publish()  # no room for another record

    def _publish(self, flags: int = 0) -> None:
        """Write the open frame's header, then count it: the reader may take it."""
        FRAME.pack_into(self.memory, self.start, FRAME_MAGIC, self.fill, flags, self.seq)
        sem_post(self.full.sem)  # after the frame: sem_post releases what we stored
        self.seq += 1
        self.start = self.start + self.slot_size if self.start != self.last else HEADER_SIZE
        self.fill = 0
        self.held = False

    def _wait_for_free_slot(self) -> None:
        """Take one from the free count, waiting for the reader if need be: the
        slot of frame seq is then ours to fill."""
        if not self.free.wait():
            raise PeerGone("processa has gone away (it closed the ack FIFO)")
        self.held = True


class Reader(Ring):
    """processa's end: take counted frames out of their slots, in order."""

    def __init__(self, memory: memoryview, slots: int, slot_size: int, notify_fd: int) -> None:
        super().__init__(memory, slots, slot_size, notify_fd)  # notify hangs up when processb goes
        self.messages = 0  # whole messages so far

    def receive(self, deliver: Callable[[memoryview, int], None],
                handed_back: Callable[[], None] = lambda: None) -> bool:
        """Call deliver(piece, more) for each record until the writer's END frame
        (more is MORE if the message goes on in the next record, else 0),
        and return True once the writer has closed notify; return False if it
        closed notify without an END frame. piece is a view into the segment, valid only
        during the call. handed_back() is called each time the frames taken so
        far have been handed back: what deliver copied out can be written then,
        while the writer fills the slots again."""
        while True:
            if not self.full.wait():
                return False  # the writer has gone, and every frame it counted is taken
            full, taken = self.full.sem, 0
            while True:  # every frame there now, a ring's at most, before writing out
                ended = self.take_frame(deliver)
                taken += 1
                if ended or taken == self.slots or sem_trywait(full):
                    break
            handed_back()
            if ended:
                return self._wait_for_close()

    def _wait_for_close(self) -> bool:
        """After the END frame, wait until the writer closes notify, so that it
        leaves first; return True."""
        self.full.hangup.poll()  # until POLLHUP
        if self.full.trywait():
            raise CorruptFrame(f"frames were counted after the END frame {self.seq - 1}")
        return True

    def take_frame(self, deliver: Callable[[memoryview, int], None]) -> bool:
        """Check frame seq, deliver its records and hand its slot back; return True
        if it was the END frame. Call it once for each one taken from the full count."""
        memory, start, seq = self.memory, self.start, self.seq
        magic, length, flags, claimed = FRAME.unpack_from(memory, start)
        if magic != FRAME_MAGIC or claimed != seq or flags & ~END:
            raise CorruptFrame(f"frame {seq} at offset {start} has a bad header"
                               f" (magic {magic!r}, seq {claimed}, flags {flags:#x})")
        if length > self.capacity:
            raise CorruptFrame(f"frame {self.seq} claims {length} bytes; its slot holds"
                               f" {self.capacity}: refusing to read past it")
        at, end = start + FRAME_SIZE, start + FRAME_SIZE + length
        record, header = RECORD.unpack_from, RECORD.size  # locals: once per message
        whole = 0
        while at < end:
            size, more = record(memory, at) if at + header <= end else (-1, 0)
            at += header
            if not 0 <= size <= end - at or more > MORE:
                raise CorruptFrame(f"frame {self.seq} holds a record of {size} bytes"
                                   f" (flags {more:#x}) that does not fit in it")
            deliver(memory[at:at + size], more)
            whole += not more
            at += size
        self.messages += whole
        sem_post(self.free.sem)  # after the reads: the writer may refill the slot
        self.seq = seq + 1
        self.start = start + self.slot_size if start != self.last else HEADER_SIZE
        return flags == END


# ======================================================================================
# Part III. What keeps it safe
#
# The channel above works while nothing goes wrong. These sections are for
# when something does: a failure said in one line with its exit code, a
# signal at any moment, and a segment that a killed processa left behind.
# ======================================================================================


# --- 12. Errors the user reads --------------------------------------------------------
#
# A failed call raises OSError at once (above), with the call and its
# arguments as the "filename". The programs turn it into one line on stderr;
# where we know what went wrong, we raise Refused instead, with a sentence
# saying what to do and the exit code for it.


class Refused(Exception):
    """A one-line explanation for the user and the exit code that goes with it."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class PeerGone(Refused):
    """The process at the other end went away in mid-conversation."""

    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.PEER_GONE, message)


class CorruptFrame(Refused):
    """A frame header in the segment failed a check: never read past it."""

    def __init__(self, message: str) -> None:
        super().__init__(ExitCode.CORRUPT, message)


def describe(err: OSError) -> str:
    """Say what failed and why: 'shmget(key=0x46010004, ...): EEXIST (File exists)'."""
    what = err.filename if err.filename is not None else "a system call"
    return f"{what}: {describe_errno(err)}"


def describe_errno(err: OSError) -> str:
    """Name an error as C programmers know it: 'ENOSPC (No space left on device)'."""
    return f"{errno.errorcode.get(err.errno or 0, f'errno {err.errno}')} ({err.strerror})"


# IPC_STAT needs read permission, even for the owner: a segment made with
# mode 0 (as the tutorial's b.cc, started first, made it) is closed to its
# own user too. /proc/sysvipc/shm, which every user may read, still tells
# whose it is: key shmid perms size cpid lpid nattch uid gid cuid cgid ...


def why_unreadable(shmid: int, advice: str) -> str:
    """Say why IPC_STAT of shmid was refused: another user's segment (then
    give advice), or one of our own whose mode lets not even us read it."""
    with open("/proc/sysvipc/shm") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    row = next((fields for fields in rows if int(fields[1]) == shmid), None)
    if row is None:
        return f"shmid {shmid} is gone"
    mode, cuid = int(row[2], 8) & 0o777, int(row[9])
    if cuid != os.getuid():
        return (f"shmid {shmid} was made by uid {cuid}, and its mode {mode:04o} does not let"
                f" uid {os.getuid()} read it; {advice.format(uid=cuid)}")
    return (f"shmid {shmid} is yours, but its mode {mode:04o} lets not even you read it:"
            " processa did not make it (the tutorial's b.cc, started first, makes one with"
            f" mode 0); if nothing uses it, remove it with `ipcrm -m {shmid}` and start"
            " processa again")


# --- 13. Signals and cleanup ----------------------------------------------------------
#
# The creator must remove the segment on every way out: the end of input, an
# error, Ctrl-C (SIGINT), kill (SIGTERM), a closed terminal (SIGHUP), Ctrl-\
# (SIGQUIT), and the other signals that end a process by default and that a
# person or a script sends (SIGUSR1, SIGUSR2, SIGALRM). Python ignores
# SIGPIPE and SIGXFSZ itself, so that a write fails with EPIPE or EFBIG,
# which we report. Each stop signal raises Interrupted in the main thread,
# which interrupts a blocking open(2), read(2) or poll(2) and unwinds through
# the `with` blocks that own the segment and the FIFOs; then the process dies
# by the signal itself (die_by), so that a shell loop around it stops too.
# Two gaps remain, and signals_deferred closes them: a signal just after
# shmget, before the cleanup is registered, and a signal during the cleanup
# itself. kill -9 cannot be caught: section 14 deals with what it leaves.
#
# A signal that was ignored when we started stays ignored (nohup, or a
# background job of a non-interactive shell, which ignores SIGINT): that
# was the caller's decision.
#
# Once everything is cleaned up, the program dies by the signal that stopped
# it (die_by): the default action again, and the signal raised again. An
# exit(130) would look the same in $?, but a shell tells the two apart: a
# child that exits, even with 130, handled the Ctrl-C itself, so a loop
# around it (`for i in 1 2 3; do python3 processa.py; done`) goes on to the
# next run; a child killed by SIGINT stops the loop and the script, as Ctrl-C
# does to `sleep`. See "Proper handling of SIGINT/SIGQUIT" (Cracauer).

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                signal.SIGUSR2, signal.SIGALRM)


class Interrupted(BaseException):
    """A stop signal arrived. Like KeyboardInterrupt, not an Exception, so that
    no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def end_quietly_on_signals() -> None:
    """Until stop_on_signals, let Ctrl-C end us by its default action, without
    Python's KeyboardInterrupt traceback: nothing is made yet to clean up."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop_on_signals() -> None:
    """Make each stop signal raise Interrupted, unless it is ignored."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _interrupt)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold stop signals back until the block ends, so that it runs whole."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def die_by(signum: int) -> None:
    """End this process by signal signum, as its default action does."""
    sys.stdout.flush()
    sys.stderr.flush()
    resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    signal.signal(signum, signal.SIG_DFL)  # SIGQUIT's would dump core: not with a limit of 0
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
    signal.raise_signal(signum)


class Cleanup(contextlib.ExitStack):
    """An ExitStack whose unwinding no signal can cut short."""

    def __exit__(self, *exc_info: object) -> bool:
        with signals_deferred():
            return super().__exit__(*exc_info)


# --- 14. A segment left behind --------------------------------------------------------
#
# kill -9, a power cut or a bug can end processa before it removes its
# segment; the next processa then meets EEXIST at its key. PostgreSQL's
# sysv_shmem.c shows how to decide what to do: read the segment's nattch
# (IPC_STAT does not attach, so does not change it) and look for our magic.
#
#   another user created it    never touch it (root could remove anyone's)
#   nattch > 0                 somebody uses it: never touch it
#   nattch 0, our magic        a crashed processa's: remove it and go on. Any
#                              layout's magic counts (b"shmm.py" and a digit):
#                              a processa of an older version, b"shmm.py2",
#                              killed before an upgrade, left it just the same
#   nattch 0, every byte 0     a processa killed between shmget and writing
#                              its header: ours as well, remove it (unless
#                              its creator is alive and still setting it up);
#                              if it was another program's, nothing is lost
#   anything else              not ours: refuse, and say how to pick a key
#
# Looking takes several steps, and another processa may start between them:
# read nattch 0, then it attaches and writes its magic, then we read the
# magic and would remove a live segment. So we attach first, read the
# header, and only then read nattch again: if it is exactly 1 (us), no
# other process was attached when we read the header, so the magic we saw
# was left by a process that has gone, and the segment is a leftover. (A
# processa that makes a segment stays attached until it removes it.) We
# remove it while still attached; the kernel frees it when we detach.
#
# PostgreSQL dropped "is the creator's pid alive?" as a test of staleness,
# because pids are reused. We ask it only of an all-zero segment, and only to
# refuse: a reused pid then makes us wait for nothing, never remove a
# segment in use.


def remove_leftover(key: int) -> int:
    """Remove the segment a crashed processa left at key and return its shmid;
    raise Refused if it is in use or not ours."""
    segment = Segment.find(key)
    where = f"key {show_key(key)} has shmid {segment.shmid}"
    try:
        status = segment.status()
    except PermissionError:
        raise Refused(ExitCode.SEGMENT_CONFLICT, f"key {show_key(key)}: " + why_unreadable(
            segment.shmid, "pick another key with --proj-id or --path")) from None
    creator = status.shm_perm.cuid
    if creator != os.geteuid():
        raise Refused(ExitCode.SEGMENT_CONFLICT,
                      f"{where}, created by {user_name(creator)} (uid {creator}), not by us:"
                      f" only they can remove it; pick another key with --proj-id or --path")
    if status.shm_nattch:
        raise in_use(where, status.shm_nattch, status.shm_cpid)
    try:
        memory = segment.attach(readonly=True)
        start, blank = bytes(memory[:HEADER_SIZE]), all_zero(memory)
        others = segment.status().shm_nattch - 1  # we are attached too now
        if others:
            raise in_use(where, others, status.shm_cpid)
        if blank and process_exists(status.shm_cpid):
            raise blank_in_use(where, status)
        if not is_our_magic(start) and not blank:
            raise Refused(ExitCode.SEGMENT_CONFLICT,
                          f"{where}, which processa did not make (or a processa"
                          " --seed-protocol, whose format has no header to tell); pick another"
                          " key with --proj-id or --path, or, if you know that nobody uses it,"
                          f" remove it with: ipcrm -m {segment.shmid}")
        segment.remove()
    finally:
        segment.detach()
    return segment.shmid


SETUP_SECONDS = 5  # a processa lays out its new segment well within this


def is_our_magic(start: bytes) -> bool:
    """Tell whether a segment starts with the magic of one of our layouts:
    b"shmm.py" and the layout's digit (text that merely begins so does not)."""
    return start.startswith(OUR_MAGIC) and start[len(OUR_MAGIC):len(OUR_MAGIC) + 1].isdigit()


def blank_in_use(where: str, status: shmid_ds) -> Refused:
    """Refuse an all-zero segment whose creator still runs: a processa setting
    it up, if it is new; after SETUP_SECONDS, some other program's."""
    cpid, age = status.shm_cpid, int(time.time() - status.shm_ctime)
    if age < SETUP_SECONDS:
        return Refused(ExitCode.SEGMENT_CONFLICT,
                       f"{where}, which pid {cpid} has just created and is setting up; is"
                       " another processa starting? Try again in a moment")
    return Refused(ExitCode.SEGMENT_CONFLICT,
                   f"{where}, all zero, made {age} s ago by pid {cpid} ({command_name(cpid)}),"
                   " which still runs: not a processa setting up, but another program's; pick"
                   " another key with --proj-id or --path")


def command_name(pid: int) -> str:
    """Return the command name of process pid (/proc/PID/comm), or '?' if it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as comm_file:
            return comm_file.read().strip()
    except OSError:
        return "?"


def all_zero(memory: memoryview) -> bool:
    """Tell whether every byte of memory is 0, comparing a MiB at a time."""
    zeros = bytes(min(len(memory), 1 << 20))
    return all(memory[at:at + len(zeros)] == zeros[:len(memory) - at]
               for at in range(0, len(memory), len(zeros)))


def in_use(where: str, nattch: int, creator: int) -> Refused:
    """Say that the segment at our key is in use, by whom, and what to do."""
    return Refused(ExitCode.SEGMENT_CONFLICT,
                   f"{where}, in use by {nattch} attached process(es), created by pid {creator}."
                   " Is processa already running? Stop it first, or pick another key with"
                   " --proj-id")


def process_exists(pid: int) -> bool:
    """Tell whether a process with this pid exists (kill(2) with signal 0)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, but belongs to someone else
    return True


def user_name(uid: int) -> str:
    """Return the login name for uid, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    """Return the name of group gid, or the number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def create_segment(key: int, size: int, mode: int) -> Segment:
    """Create the segment at key, first removing one a crashed processa left there."""
    for _ in range(3):
        try:
            return Segment.create(key, size, mode)
        except FileExistsError:
            pass
        try:
            shmid = remove_leftover(key)
        except OSError as err:
            if err.errno not in (errno.ENOENT, errno.EINVAL, errno.EIDRM):
                raise
            continue  # it went away while we looked: another processa removed it
        log.warning("removed shmid %d, left at key %s by a processa that did not clean up",
                    shmid, show_key(key))
    raise Refused(ExitCode.SEGMENT_CONFLICT, f"segments keep appearing at key {show_key(key)};"
                  " pick another key with --proj-id")


# ======================================================================================
# Part IV. Plumbing
#
# What the programs need around the channel: logging, the standard streams,
# command-line options, and this file's own command line, a small ipcs/ipcrm.
# ======================================================================================


# --- 15. For the programs: logging, standard streams, options -------------------------
#
# The library only logs; each program's main decides where logs go. The
# tutorial's log.hpp printed `[Info][2024-12-14 19:49:20]::message`; we keep
# that shape, on stderr, so stdout carries only what the user asked for.

LEVEL_NAMES = {logging.DEBUG: "Debug", logging.INFO: "Info", logging.WARNING: "Warning",
               logging.ERROR: "Error", logging.CRITICAL: "Fatal"}


# How repr shows a byte 0x80 to 0xff of a path, but not an escaped backslash and "udc".
SURROGATE_IN_REPR = re.compile(r"(?<!\\)\\udc([89a-f][0-9a-f])")


class TutorialFormatter(logging.Formatter):
    """Format records as [Info][2026-11-26 20:10:38]::message."""

    def __init__(self) -> None:
        super().__init__("[%(level)s][%(asctime)s]::%(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        record.level = LEVEL_NAMES.get(record.levelno, record.levelname)
        # A path's bytes that are not UTF-8 come as surrogates (PEP 383),
        # and in a repr as \udcfe: show each as \xfe, the way ls -b does.
        text = os.fsencode(super().format(record)).decode(errors="backslashreplace")
        return SURROGATE_IN_REPR.sub(r"\\x\1", text)


def counted(count: int, noun: str) -> str:
    """Say a count with its noun: '1 message', '2 messages'."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def configure_logging(verbosity: int) -> None:
    """Log to stderr: warnings and worse with -q, Info by default, Debug with -v."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TutorialFormatter())
    level = logging.WARNING if verbosity < 0 else logging.DEBUG if verbosity > 0 else logging.INFO
    logging.basicConfig(level=level, handlers=[handler])


STANDARD_STREAMS = ("stdin", "stdout", "stderr")  # fds 0, 1 and 2


def reopen_closed_standard_streams() -> list[str]:
    """Point each closed standard fd at /dev/null; return the names of those
    that were closed (a caller started us with `>&-` or `<&-`)."""
    # Otherwise the next open(2) takes the free number: a FIFO opened as fd 1
    # would receive what we print. Python leaves sys.stdout None then, which
    # print() and input() do not expect.
    closed = []
    for fd, name in enumerate(STANDARD_STREAMS):
        try:
            os.fstat(fd)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), fd)  # the open takes fd itself, or a lower one
            closed.append(name)
        if getattr(sys, name) is None:
            stream = open(fd, "w" if fd else "r", closefd=False)  # noqa: SIM115 - never closed
            setattr(sys, name, stream)
    return closed


def run(program: str, body: Callable[[], int]) -> int:
    """Run a program's body; turn each way it can fail into one line and an exit
    code, or, after a stop signal, into death by that signal."""
    stop_on_signals()
    try:
        return body()
    except Interrupted as stop:
        log.info("%s: stopped by %s", program, stop)
        die_by(stop.signum)
        return ExitCode.SIGNALLED + stop.signum  # only if the signal did not end us
    except Refused as refusal:
        log.critical("%s: %s", program, refusal)
        return refusal.code
    except OSError as err:
        log.critical("%s: %s", program, describe(err))
        return ExitCode.FAILURE


def read_kernel_limit(name: str) -> int:
    """Return a System V limit from /proc/sys/kernel (shmmax, shmall, shmmni)."""
    with open(f"/proc/sys/kernel/{name}") as limit:
        return int(limit.read())


# Numbers on our command lines are read as C reads them with strtol(3) in
# base 0, and as ipcrm reads a key: 0x for hex, a leading 0 for octal (so
# --proj-id 071 is 57, as a C programmer means it), ASCII digits only.
C_DECIMAL = re.compile(r"\s*[-+]?[0-9]+", re.ASCII)
C_ANY_BASE = re.compile(r"\s*[-+]?(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", re.ASCII)


def c_number(text: str, any_base: bool) -> int | None:
    """Read text whole as strtol(3) does, in base 10 or (any_base) base 0;
    None if it is not a number."""
    if not (C_ANY_BASE if any_base else C_DECIMAL).fullmatch(text):
        return None
    digits = text.strip().lstrip("+-")
    base = 10
    if any_base and digits[:2] in ("0x", "0X"):
        base = 16
    elif any_base and digits.startswith("0"):
        base = 8
    return -int(digits, base) if text.strip().startswith("-") else int(digits, base)


def int_argument(text: str) -> int:
    """Parse an integer as strtol(3) in base 0 does: 4096, 0x1000 or 010000."""
    value = c_number(text, any_base=True)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text} is not a number (such as 4096, 0x1000)")
    return value


def proj_id_argument(text: str) -> int:
    """Parse --proj-id: an int whose low 8 bits, the ones ftok keeps, are not 0."""
    value = int_argument(text)
    if not 0 < value <= 0x7FFFFFFF:
        raise argparse.ArgumentTypeError(f"{text} is not between 1 and 0x7fffffff")
    if value & 0xFF == 0:
        raise argparse.ArgumentTypeError(
            f"ftok(3) keeps only the low 8 bits of the project id, and those of {text}"
            " are 0; choose one whose last two hex digits are not 00")
    return value


# The segment header (section 9) stores the slot size in 32 bits, so a
# larger segment could not be laid out, however much memory the kernel allows.
LAYOUT_MAX_SIZE = 0xFFFFFFFF  # bytes: 4 GiB - 1


def size_argument(text: str) -> int:
    """Parse --size of processa and processb: a segment size (segment_size_argument)
    that the message layout can also describe."""
    if int_argument(text) > LAYOUT_MAX_SIZE:
        raise argparse.ArgumentTypeError(
            f"{text} bytes is more than {LAYOUT_MAX_SIZE} (4 GiB - 1): the message layout"
            " stores sizes in 32 bits")
    return segment_size_argument(text)


def segment_size_argument(text: str) -> int:
    """Parse a segment size: bytes, more than 0, within shmmax and shmall."""
    size = int_argument(text)
    if size <= 0:
        raise argparse.ArgumentTypeError(f"{text}: a segment needs at least one byte")
    shmmax, shmall = read_kernel_limit("shmmax"), read_kernel_limit("shmall")
    if size > shmmax or -(-size // PAGE_SIZE) > shmall:
        raise argparse.ArgumentTypeError(
            f"{text} bytes is beyond this system's limit (shmmax {shmmax} bytes,"
            f" shmall {shmall} pages in /proc/sys/kernel)")
    return size


def mode_argument(text: str) -> int:
    """Parse --mode: octal permission bits, 0 to 0777."""
    if not re.fullmatch("[0-7]+", text, re.ASCII):
        raise argparse.ArgumentTypeError(f"{text} is not an octal mode such as 0600")
    mode = int(text, 8)
    if not 0 <= mode <= 0o777:
        raise argparse.ArgumentTypeError(f"{text} has bits beyond 0777")
    return mode


def seconds_argument(text: str) -> float:
    """Parse a number of seconds: finite, 0 or more."""
    # float() also takes "nan", "inf", "1_0" and digits of other scripts; only
    # a number as C's strtod(3) reads it is a number of seconds here. nan
    # compares false with everything, so a deadline of nan is never reached.
    if not re.fullmatch(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", text, re.ASCII):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds")
    seconds = float(text)
    if not math.isfinite(seconds) or seconds < 0:
        raise argparse.ArgumentTypeError(f"{text}: choose a finite number of seconds, 0 or more")
    return seconds + 0.0  # -0 becomes 0, which is how it is said


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """Add --path, --proj-id, -v and -q: what every command needs to find the key."""
    parser.add_argument("--path", default=comm.FTOK_PATH,
                        help="existing file for ftok(3) (default: this checkout, %(default)s)")
    parser.add_argument("--proj-id", type=proj_id_argument, default=comm.PROJ_ID, metavar="N",
                        help="project id for ftok(3); only its low 8 bits count"
                             f" (default: {comm.PROJ_ID:#x})")
    add_verbosity_options(parser)


def add_verbosity_options(parser: argparse.ArgumentParser) -> None:
    """Add -v and -q, which say how much to log."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log Debug lines too")
    parser.add_argument("-q", "--quiet", action="count", default=0, help="log warnings only")


def add_channel_options(parser: argparse.ArgumentParser) -> None:
    """Add the options both processa and processb take."""
    add_key_options(parser)
    parser.add_argument("--size", type=size_argument, default=comm.SEGMENT_SIZE, metavar="BYTES",
                        help="segment size in bytes: processa makes it this big, processb"
                             f" refuses a smaller one (default: {comm.SEGMENT_SIZE}; for"
                             f" processa, {slot_size_for(comm.SEGMENT_SIZE, 1)} more for each"
                             " slot beyond the first)")
    parser.add_argument("--mode", type=mode_argument, default=comm.SEGMENT_MODE, metavar="OCTAL",
                        help="segment permissions: processa makes it with them, processb"
                             f" refuses a more open one (default: {comm.SEGMENT_MODE:04o})")
    parser.add_argument("--raw", action="store_true",
                        help="stream bytes as they are, instead of one message per line")
    parser.add_argument("--seed-protocol", action="store_true",
                        help="speak the tutorial's protocol (./myfifo, one C string, no"
                             " acknowledgement), to talk to its a.cc and b.cc")


def key_from_arguments(args: argparse.Namespace) -> int:
    """Make the key from --path and --proj-id, noting when proj_id has extra bits."""
    if args.proj_id > 0xFF:
        log.info("note: ftok keeps only the low 8 bits of --proj-id %#x, so the key uses %#04x",
                 args.proj_id, args.proj_id & 0xFF)
    if os.path.realpath(args.path).startswith("/proc/"):
        # /proc/self is each process's own, and /proc's inodes come and go
        # with the processes: the two sides would get different keys.
        raise Refused(ExitCode.USAGE, f"--path {args.path} is under /proc, whose files are not"
                      " the same for every process, so processa and processb would derive"
                      " different keys; name an ordinary file that both can stat")
    try:
        return make_key(args.path, args.proj_id)
    except OSError as err:
        raise Refused(ExitCode.USAGE, f"{describe(err)}: --path must name a file that"
                      " both processes can stat") from None


# --- 16. The command line: a small ipcs and ipcrm -------------------------------------
#
# ipcs reads /proc/sysvipc/shm when it can. The older route, used below, asks
# the kernel directly: shmctl(0, SHM_INFO) returns the highest index in use,
# and shmctl(index, SHM_STAT_ANY) fills a shmid_ds for each index and returns
# its shmid (SHM_STAT does the same but skips segments we may not read).
# /proc/sysvipc/shm holds the same facts as text, with two differences: the
# key is in signed decimal (0x94000004 shows as -1811939324), and perms is
# the whole mode, SHM_DEST and SHM_LOCKED bits included (1600, not 600).
#
# SHM_STAT_ANY is young: Linux has it since 4.17, and qemu-user (7.2, which
# runs our arm64 tests) does not translate it. Both refuse it with EINVAL,
# the very errno that means "no segment at this index", so the refusal
# looks like an empty system. We notice it when SHM_INFO counts segments
# and SHM_STAT_ANY finds none, and then read /proc/sysvipc/shm, as ipcs
# does first. Not SHM_STAT: it skips the segments we may not read, which
# ipcs still lists. If the last segment went away between SHM_INFO and our
# look, /proc/sysvipc/shm says so too: the fallback is never wrong.


class shm_info(ctypes.Structure):
    """struct shm_info: what shmctl(SHM_INFO) reports about all segments."""

    _fields_ = [
        ("used_ids", ctypes.c_int),          # segments that exist
        ("shm_tot", ctypes.c_ulong),         # pages of shared memory in total
        ("shm_rss", ctypes.c_ulong),         # pages resident
        ("shm_swp", ctypes.c_ulong),         # pages swapped out
        ("swap_attempts", ctypes.c_ulong),   # unused since Linux 2.4
        ("swap_successes", ctypes.c_ulong),  # unused since Linux 2.4
    ]


def segments_by_index(highest: int) -> Iterator[tuple[int, shmid_ds]]:
    """Yield (shmid, shmid_ds) for each index in use, up to highest (SHM_STAT_ANY)."""
    for index in range(highest + 1):
        status = shmid_ds()  # fresh zeros: qemu-user writes only 16 bits of mode
        try:
            shmid = shmctl(index, SHM_STAT_ANY, ctypes.byref(status))
        except OSError as err:
            if err.errno != errno.EINVAL:  # EINVAL: this index is free
                raise
            continue
        yield shmid, status


def segments_in_proc() -> list[tuple[int, shmid_ds]]:
    """Return (shmid, shmid_ds) for each line of /proc/sysvipc/shm."""
    segments = []
    with open("/proc/sysvipc/shm", encoding="ascii") as table:
        names = next(table).split()  # key shmid perms size cpid lpid nattch uid ...
        for line in table:
            row = dict(zip(names, line.split()))
            status = shmid_ds()
            perm = status.shm_perm
            perm.key = int(row["key"])        # signed decimal, like key_t
            perm.mode = int(row["perms"], 8)  # octal, SHM_DEST included
            perm.uid, perm.gid = int(row["uid"]), int(row["gid"])
            perm.cuid, perm.cgid = int(row["cuid"]), int(row["cgid"])
            status.shm_segsz = int(row["size"])
            status.shm_cpid, status.shm_lpid = int(row["cpid"]), int(row["lpid"])
            status.shm_nattch = int(row["nattch"])
            status.shm_atime, status.shm_dtime = int(row["atime"]), int(row["dtime"])
            status.shm_ctime = int(row["ctime"])
            segments.append((int(row["shmid"]), status))
    return segments


def all_segments() -> list[tuple[int, shmid_ds]]:
    """Return (shmid, shmid_ds) for every segment on the system, as ipcs -m does."""
    info = shm_info()
    highest = shmctl(0, SHM_INFO, ctypes.cast(ctypes.pointer(info), ctypes.POINTER(shmid_ds)))
    segments = list(segments_by_index(highest))
    if info.used_ids and not segments:  # SHM_STAT_ANY refused: see above
        return segments_in_proc()
    return segments


def ipcs_line(shmid: int, status: shmid_ds) -> str:
    """Format one segment in the columns of ipcs -m."""
    perm = status.shm_perm
    dest = "dest" if perm.mode & SHM_DEST else " "
    locked = "locked" if perm.mode & SHM_LOCKED else " "
    return (f"{show_key(perm.key)} {shmid:<10d} {user_name(perm.uid):<10.10s}"
            f" {perm.mode & 0o777:<10o} {status.shm_segsz:<10d} {status.shm_nattch:<10d}"
            f" {dest:<6s} {locked:<6s}")


def ipcs_time(seconds: int) -> str:
    """Format a time as ipcs -i does: ctime(3), or Not set for 0."""
    return f"{time.ctime(seconds) if seconds else 'Not set':<26.24s}"


NEGATIVE_KEY_NOTE = ("; negative, and valid all the same: only -1 means failure. The tutorial"
                     " tested `n < 0`, took this key for a failure and printed errno, which"
                     " nobody had set: \"filed ftok:Success\"")


def command_key(args: argparse.Namespace) -> int:
    """Print our key as ipcs shows it; -v also spells out the formula, and the
    key as the signed key_t that C code holds."""
    key = key_from_arguments(args)
    log.debug("ftok(%r, %#x) = %s = %s", args.path, args.proj_id, show_key(key),
              ftok_formula(args.path, args.proj_id))
    log.debug("as a key_t, a signed int: %d%s", key, NEGATIVE_KEY_NOTE if key < 0 else "")
    print(show_key(key))
    return ExitCode.OK


def command_ls(_args: argparse.Namespace) -> int:
    """Print every segment in the layout of ipcs -m."""
    print("\n------ Shared Memory Segments --------")
    print(f"{'key':<10s} {'shmid':<10s} {'owner':<10s} {'perms':<10s} {'bytes':<10s}"
          f" {'nattch':<10s} {'status':<12s}")
    for shmid, status in all_segments():
        print(ipcs_line(shmid, status))
    print()
    return ExitCode.OK


def command_stat(args: argparse.Namespace) -> int:
    """Print every field of one segment's shmid_ds in the layout of ipcs -m -i,
    then its mode in decimal, as the tutorial printed it."""
    # Found among all segments, as ipcs finds it, so no read permission is needed.
    status = next((found for shmid, found in all_segments() if shmid == args.shmid), None)
    if status is None:
        raise Refused(ExitCode.FAILURE, f"id {args.shmid} not found; `shmm.py ls` lists them")
    perm = status.shm_perm
    print(f"\nShared memory Segment shmid={args.shmid}")
    print(f"uid={perm.uid}\tgid={perm.gid}\tcuid={perm.cuid}\tcgid={perm.cgid}")
    print(f"mode={show_mode(perm.mode)}\taccess_perms={show_mode(perm.mode & 0o777)}")
    print(f"bytes={status.shm_segsz}\tlpid={status.shm_lpid}\tcpid={status.shm_cpid}"
          f"\tnattch={status.shm_nattch}")
    print(f"att_time={ipcs_time(status.shm_atime)}")
    print(f"det_time={ipcs_time(status.shm_dtime)}")
    print(f"change_time={ipcs_time(status.shm_ctime)}")
    print()
    # The tutorial printed shm_perm.mode with cout, in decimal, and got 438.
    print(f"mode in decimal: {perm.mode} (as the tutorial printed it, \"shm mode:{perm.mode}\";"
          f" octal {show_mode(perm.mode)})")
    return ExitCode.OK


# ipcrm and ipcs read an id with strtol(3) in base 10, and ipcrm a key with
# strtoul(3) in base 0 (0x: hex, a leading 0: octal), after any blanks and
# an optional sign. An id must fit in an int. ctypes would cut a larger
# number to 32 bits without a word, and name another segment: given
# 4294967301, shmctl would act on shmid 5. ipcrm -M does just that with keys
# (4294967301 is key 5); we refuse a key that does not fit in 32 bits, read
# as unsigned (0xffffffff, as ipcs shows it) or signed (-1, what key_t holds).
INT_RANGE = (-(1 << 31), (1 << 31) - 1)  # an int: what shmctl takes as shmid
KEY_RANGE = (-(1 << 31), (1 << 32) - 1)  # 32 bits, signed or unsigned


def parse_in_range(text: str, any_base: bool, bounds: tuple[int, int], what: str) -> int:
    """Read text as a number within bounds, or fail with ipcrm's words."""
    value = c_number(text, any_base)
    if value is None:
        raise argparse.ArgumentTypeError(f"failed to parse {what}: '{text}'")
    if not bounds[0] <= value <= bounds[1]:
        raise argparse.ArgumentTypeError(
            f"failed to parse {what}: '{text}': {os.strerror(errno.ERANGE)}")
    return value


def shmid_argument(text: str) -> int:
    """Parse a SHMID as ipcrm -m does."""
    return parse_in_range(text, False, INT_RANGE, "argument")


def stat_shmid_argument(text: str) -> int:
    """Parse the SHMID of `stat` as ipcs -m -i does."""
    return parse_in_range(text, False, INT_RANGE, "id argument")


def key_argument(text: str) -> tuple[int, str]:
    """Parse --key of `rm` as ipcrm -M does, but only 32 bits; keep the text,
    which ipcrm's messages quote."""
    return parse_in_range(text, True, KEY_RANGE, "argument"), text


# ipcrm's words for why a removal failed.
RM_ERRORS = {errno.EPERM: "permission denied for", errno.EACCES: "permission denied for",
             errno.EINVAL: "invalid", errno.ENOENT: "invalid", errno.EIDRM: "already removed"}


def remove_segment(target: int, by_key: bool, text: str) -> bool:
    """Remove one segment by shmid or by key, as ipcrm does; say why not and
    return False if it cannot be removed. text: the key as it was typed."""
    # A segment already marked SHM_DEST has key IPC_PRIVATE, so its old key
    # finds nothing any more ("invalid key"): only its shmid still does.
    what = f"key ({text})" if by_key else f"id ({target})"
    if by_key and target == IPC_PRIVATE:
        log.error("rm: illegal %s: IPC_PRIVATE names no segment", what)
        return False
    try:
        shmctl(Segment.find(target).shmid if by_key else target, IPC_RMID, None)
    except OSError as err:
        if err.errno not in RM_ERRORS:
            raise
        log.error("rm: %s %s", RM_ERRORS[err.errno], what)
        return False
    return True


def command_rm(args: argparse.Namespace) -> int:
    """Remove segments by shmid (like ipcrm -m) or by key (like ipcrm -M)."""
    removed = [remove_segment(shmid, by_key=False, text=str(shmid)) for shmid in args.shmids]
    removed += [remove_segment(key, by_key=True, text=text) for key, text in args.keys]
    return ExitCode.OK if all(removed) else ExitCode.FAILURE


def command_clean(args: argparse.Namespace) -> int:
    """Remove what a crashed processa left at our key: its segment and FIFOs."""
    key = key_from_arguments(args)
    try:
        log.info("removed shmid %d at key %s", remove_leftover(key), show_key(key))
    except FileNotFoundError:
        log.info("no segment at key %s", show_key(key))
    directory = fifo_directory()
    if not os.path.isdir(directory):
        return ExitCode.OK
    check_private(directory)
    with locked(directory):  # as processa holds it to make and replace FIFOs
        for path in fifo_paths(key):
            if has_reader(path):
                raise Refused(ExitCode.SEGMENT_CONFLICT, f"{path} is in use: a processa listens"
                              f" at key {show_key(key)}; stop it, and it removes its own")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                log.info("removed FIFO %s", path)
    return ExitCode.OK


# --- 17. The experiments: one command per call ----------------------------------------
#
# The tutorial ran each experiment by editing its program and running it
# again. Here each experiment is a command, a few lines on top of Part I, and
# what the kernel says is its output; `make lessons` runs them in the
# tutorial's order:
#
#   create   shmget(key, size, IPC_CREAT|IPC_EXCL|mode), exactly as asked: by
#            default with mode 0, like the tutorial's first segment (perms 0).
#            Run it twice: EEXIST, because the segment outlived the first run.
#   attach   shmat, then hold; shmdt: nattch before and after, and the length
#            of the mapping in whole pages (4097 bytes take two).
#   write    the tutorial's writer: TEXT and a terminating NUL at offset 0.
#   read     the tutorial's reader: the C string at offset 0; --every is its
#            loop, which repeats what it has seen and misses what it has not.
#   chmod    shmctl(IPC_SET), which the tutorial names and never uses: it
#            opens a perms-0 segment without making it again.
#
# All but create take a SHMID, the user's handle, as ipcrm does. The errors
# a learner meets are said in one line: no segment with that shmid (exit 1),
# or one whose mode does not let this user in (exit 4), with the chmod that
# opens it. IPC_STAT and shmat need read permission even for the owner, but
# IPC_SET needs only ownership: so the owner of a perms-0 segment can open it.

READ, WRITE = 0o4, 0o2  # permission bits, as in each class of a mode (r--, -w-)
CHANGE = 0              # not a permission: IPC_SET asks for ownership instead


def shmm_command(*words: object) -> str:
    """Return a command line that runs this file with words, from any directory."""
    here = os.path.abspath(__file__)
    return " ".join(["python3", shlex.quote(here), *(shlex.quote(str(word)) for word in words)])


def status_in_proc(shmid: int) -> shmid_ds | None:
    """Return what /proc/sysvipc/shm, which every user may read, says of shmid;
    None if no segment has it."""
    return next((status for found, status in segments_in_proc() if found == shmid), None)


def why_not_allowed(shmid: int, access: int) -> str:
    """Say why this user may not use shmid for access (READ, READ | WRITE or
    CHANGE), and the command that lets them, if they can run it."""
    status = status_in_proc(shmid)
    if status is None:
        return f"shmid {shmid} is gone"
    perm = status.shm_perm
    mode, owner = perm.mode & 0o777, f"{user_name(perm.uid)} (uid {perm.uid})"
    ours = os.geteuid() in (perm.uid, perm.cuid)
    if access == CHANGE:
        creator = f" (or its creator, uid {perm.cuid})" if perm.cuid != perm.uid else ""
        return (f"only the owner of shmid {shmid}, {owner}{creator}, or root may change its"
                " mode (IPC_SET); run chmod as that user")
    what = "read and write" if access & WRITE else "read"
    if ours:
        return (f"shmid {shmid} has mode {show_mode(mode)}, which does not let even its owner"
                f" {what} it; you own it, so you can open it with"
                f" `{shmm_command('chmod', shmid, f'{mode | 0o600:04o}')}`"
                " (IPC_SET needs ownership, not read permission)")
    # ipcperms() in ipc/util.c: the owner's bits, else the group's, else the others'.
    ours_by_group = perm.gid == os.getegid() or perm.gid in os.getgroups()
    opened = mode | access << (3 if ours_by_group else 0)
    return (f"shmid {shmid} belongs to {owner}, and its mode {show_mode(mode)} does not let uid"
            f" {os.geteuid()} {what} it; only its owner (or root) can open it to you, with"
            f" `{shmm_command('chmod', shmid, f'{opened:04o}')}`")


@contextlib.contextmanager
def explained(shmid: int, access: int) -> Iterator[None]:
    """Turn a call on shmid that fails because there is no such segment, or
    because this user may not use it, into one line saying so."""
    try:
        yield
    except OSError as err:
        if err.errno in (errno.EINVAL, errno.EIDRM):
            raise Refused(ExitCode.FAILURE, f"{describe(err)}: no segment has shmid {shmid} (it"
                          f" was never made, or it was removed); `{shmm_command('ls')}`"
                          " lists those that exist") from None
        if err.errno in (errno.EACCES, errno.EPERM):
            raise Refused(ExitCode.PERMISSION_DENIED,
                          f"{describe(err)}: {why_not_allowed(shmid, access)}") from None
        raise


def attach_by_id(shmid: int, readonly: bool) -> Segment:
    """Attach the segment with this shmid, or say in one line why not."""
    segment = Segment(shmid, IPC_PRIVATE, created=False)  # found by its shmid: no key needed
    with explained(shmid, READ if readonly else READ | WRITE), signals_deferred():
        segment.attach(readonly)
    return segment


@contextlib.contextmanager
def attached(shmid: int, readonly: bool) -> Iterator[memoryview]:
    """Attach the segment with this shmid for the length of the block."""
    segment = attach_by_id(shmid, readonly)
    try:
        yield segment.memory
    finally:
        with signals_deferred():
            segment.detach()


def who_has(key: int) -> str:
    """Name the segment in the way at key and the command that removes it, or
    who alone can remove it."""
    try:
        shmid = shmget(key, 0, 0)  # asks for no permission, so finds it even with perms 0
    except FileNotFoundError:
        return f"the segment at key {show_key(key)} has gone since; run create again"
    status = status_in_proc(shmid)
    if status is None:
        return f"shmid {shmid}, at key {show_key(key)}, has gone since; run create again"
    perm = status.shm_perm
    where = (f"key {show_key(key)} has shmid {shmid} already (a segment outlives the process"
             " that made it)")
    if os.geteuid() in (0, perm.uid, perm.cuid):
        return (f"{where}; remove it with `{shmm_command('rm', shmid)}` (or ipcrm -m {shmid}),"
                " or pick another key with --proj-id")
    return (f"{where}, which belongs to {user_name(perm.uid)} (uid {perm.uid}): only they can"
            " remove it; pick another key with --proj-id or --path")


def command_create(args: argparse.Namespace) -> int:
    """Create a segment with shmget(IPC_CREAT | IPC_EXCL | mode); print its shmid."""
    key = key_from_arguments(args)
    flags = IPC_CREAT | IPC_EXCL | args.mode
    with signals_deferred():  # once it exists, its shmid is printed before a signal ends us
        try:
            shmid = shmget(key, args.size, flags)
        except FileExistsError as err:
            raise Refused(ExitCode.SEGMENT_CONFLICT, f"{describe(err)}: {who_has(key)}") from None
        log.info("%s = shmid %d", show_call("shmget", dict.fromkeys(("key", "size", "shmflg")),
                                            (key, args.size, flags)), shmid)
        try:
            print(shmid, flush=True)
        except OSError:  # nobody would learn its shmid: undo
            Segment(shmid, key, created=True).remove()
            raise
    return ExitCode.OK


def mapped_length(address: int) -> int:
    """Return the length of our mapping that starts at address (/proc/self/maps)."""
    with open("/proc/self/maps") as maps:  # lines: start-end perms offset dev inode path
        for line in maps:
            start, end = (int(bound, 16) for bound in line.split()[0].split("-"))
            if start == address:
                return end - start
    raise Refused(ExitCode.FAILURE, f"/proc/self/maps shows no mapping at {address:#x}")


HOLD_STEP = 86400.0  # seconds poll(2) waits at most at a time: a longer timeout overflows


def hold(seconds: float | None) -> None:
    """Return at a line on stdin, or once seconds have passed (None: never). End
    of input does not end the hold; a stop signal does, as Interrupted."""
    deadline = time.monotonic() + (math.inf if seconds is None else seconds)
    stdin = select.poll()
    stdin.register(0, select.POLLIN)
    while time.monotonic() < deadline:
        if not stdin.poll(min(deadline - time.monotonic(), HOLD_STEP) * 1000):
            continue
        chunk = os.read(0, 4096)
        if b"\n" in chunk:
            return
        if not chunk:
            log.info("end of input: holding on, until --for or a stop signal (Ctrl-C)")
            stdin.unregister(0)  # poll() now only sleeps


def after_detach(segment: Segment) -> str:
    """Say what IPC_STAT reports once we have detached, while we still run."""
    try:
        nattch = segment.status().shm_nattch
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EIDRM):
            raise
        return ("shmdt: detached; the segment is gone: it had been removed (IPC_RMID), and"
                " this was its last attach")
    return f"shmdt: detached; nattch {nattch}, while this process (pid {os.getpid()}) still runs"


def command_attach(args: argparse.Namespace) -> int:
    """Attach a segment, show the mapping and nattch, hold it, detach, show nattch."""
    segment = attach_by_id(args.shmid, readonly=False)
    try:
        length, size = mapped_length(segment.address), segment.status().shm_segsz
        print(f"shmat: shmid {args.shmid} at {segment.address:#x}")
        print(f"mapped: {length} bytes = {counted(length // PAGE_SIZE, 'page')} of {PAGE_SIZE}"
              f" (/proc/self/maps), for a segment of {size} bytes")
        print(f"nattch {segment.status().shm_nattch} (IPC_STAT)", flush=True)
        until = "" if args.seconds is None else f", or {args.seconds:g} s (--for),"
        log.info("holding shmid %d: a line on stdin (Enter)%s or Ctrl-C ends it", args.shmid,
                 until)
        hold(args.seconds)
    finally:
        with signals_deferred():
            segment.detach()
            print(after_detach(segment), flush=True)
    return ExitCode.OK


def command_write(args: argparse.Namespace) -> int:
    """Copy TEXT and a terminating NUL to the start of a segment, as the tutorial's writer."""
    text = os.fsencode(args.text)  # the argument's bytes, whatever they are
    with attached(args.shmid, readonly=False) as memory:
        if len(text) + 1 > len(memory):
            raise Refused(ExitCode.USAGE, f"TEXT has {counted(len(text), 'byte')}, {len(text) + 1}"
                          f" with its terminating NUL: more than the {len(memory)} bytes of"
                          f" shmid {args.shmid}; write less, or create a larger segment"
                          " (create --size)")
        if bytes(memory[:len(MAGIC)]) == MAGIC:
            raise Refused(ExitCode.SEGMENT_CONFLICT,
                          f"shmid {args.shmid} starts with processa's header ({MAGIC.decode()}):"
                          " a C string would overwrite it; write into a segment of your own,"
                          f" made with `{shmm_command('create')}`")
        write_c_string(memory, text)
    log.info("wrote %s and a NUL at offset 0 of shmid %d", counted(len(text), "byte"),
             args.shmid)
    return ExitCode.OK


def command_read(args: argparse.Namespace) -> int:
    """Print the C string at the start of a segment; --every: again and again,
    attached all the while, as the tutorial's first reader."""
    with attached(args.shmid, readonly=True) as memory:
        while True:
            sys.stdout.buffer.write(read_c_string(memory) + b"\n")
            sys.stdout.flush()
            if args.every is None:
                return ExitCode.OK
            time.sleep(args.every)


def current_perm(shmid: int) -> ipc_perm:
    """Return the ipc_perm of shmid: from IPC_STAT, or, where that is refused
    (it needs read permission, even for the owner), from /proc/sysvipc/shm."""
    status = shmid_ds()
    try:
        shmctl(shmid, IPC_STAT, ctypes.byref(status))
    except PermissionError:
        status = status_in_proc(shmid)
        if status is None:
            raise Refused(ExitCode.FAILURE, f"shmid {shmid} is gone") from None
    return status.shm_perm


def command_chmod(args: argparse.Namespace) -> int:
    """Set the permission bits of a segment with shmctl(IPC_SET), keeping its owner."""
    # IPC_SET sets uid, gid and mode at once, so the buffer carries the
    # current owner. Someone who changes the owner between our look and the
    # call would see that change undone; the kernel offers nothing atomic.
    with explained(args.shmid, CHANGE):
        perm = current_perm(args.shmid)
        wanted = shmid_ds()
        wanted.shm_perm.uid, wanted.shm_perm.gid, wanted.shm_perm.mode = perm.uid, perm.gid, args.mode
        shmctl(args.shmid, IPC_SET, ctypes.byref(wanted))
    print(f"shmid {args.shmid}: mode {show_mode(perm.mode & 0o777)} -> {args.mode:04o}")
    return ExitCode.OK


# --- 18. The entry point --------------------------------------------------------------


def parse_command_line(argv: list[str] | None) -> argparse.Namespace:
    """Parse `shmm.py SUBCOMMAND ...`; --help prints this module's docstring."""
    parser = argparse.ArgumentParser(prog="shmm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", metavar="SUBCOMMAND", required=True)
    key = commands.add_parser("key", help="print our key as ipcs shows it")
    add_key_options(key)
    key.set_defaults(run=command_key)
    ls = commands.add_parser("ls", help="list every segment, like ipcs -m")
    ls.set_defaults(run=command_ls, verbose=0, quiet=0)
    show = commands.add_parser("stat", help="show one segment, like ipcs -m -i SHMID")
    show.add_argument("shmid", type=stat_shmid_argument)
    show.set_defaults(run=command_stat, verbose=0, quiet=0)
    rm = commands.add_parser("rm", help="remove segments, like ipcrm -m SHMID or -M KEY")
    rm.add_argument("shmids", type=shmid_argument, nargs="*", default=[], metavar="SHMID")
    rm.add_argument("--key", type=key_argument, action="append", default=[], dest="keys",
                    help="remove the segment at this key (may be given again, as ipcrm -M)")
    rm.set_defaults(run=command_rm, verbose=0, quiet=0)
    clean = commands.add_parser("clean", help="remove what a crashed processa left at our key")
    add_key_options(clean)
    clean.set_defaults(run=command_clean)
    add_experiments(commands)
    args = parser.parse_args(argv)
    if args.command == "rm" and not (args.shmids or args.keys):
        rm.error("name what to remove: SHMID..., or --key KEY")
    return args


def add_experiments(commands: Any) -> None:
    """Add the subcommands of section 17, one for each call."""
    create = commands.add_parser("create", help="shmget(IPC_CREAT|IPC_EXCL|mode); print the shmid")
    add_key_options(create)
    create.add_argument("--size", type=segment_size_argument, default=comm.SEGMENT_SIZE,
                        metavar="BYTES", help="segment size in bytes (default: %(default)s)")
    create.add_argument("--mode", type=mode_argument, default=0, metavar="OCTAL",
                        help="permission bits (default: 0, as the tutorial's first shmget)")
    create.set_defaults(run=command_create)
    attach = commands.add_parser("attach", help="shmat, show the mapping and nattch, hold, shmdt")
    attach.add_argument("shmid", type=shmid_argument)
    attach.add_argument("--for", type=seconds_argument, dest="seconds", metavar="SECONDS",
                        help="detach after this long (default: at a line on stdin, or Ctrl-C)")
    attach.set_defaults(run=command_attach)
    write = commands.add_parser("write", help="copy TEXT and a NUL to the start of a segment")
    write.add_argument("shmid", type=shmid_argument)
    write.add_argument("text", metavar="TEXT")
    write.set_defaults(run=command_write)
    read = commands.add_parser("read", help="print the C string at the start of a segment")
    read.add_argument("shmid", type=shmid_argument)
    read.add_argument("--every", type=seconds_argument, metavar="SECONDS",
                      help="stay attached and print it again every SECONDS, until Ctrl-C")
    read.set_defaults(run=command_read)
    chmod = commands.add_parser("chmod", help="set a segment's mode with shmctl(IPC_SET)")
    chmod.add_argument("shmid", type=shmid_argument)
    chmod.add_argument("mode", type=mode_argument, metavar="MODE")
    chmod.set_defaults(run=command_chmod)
    for parser in (attach, write, read, chmod):
        add_verbosity_options(parser)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand of the command line."""
    closed = reopen_closed_standard_streams()
    args = parse_command_line(argv)
    configure_logging(args.verbose - args.quiet)
    return run("shmm.py", lambda: run_command(args, closed))


def run_command(args: argparse.Namespace, closed: list[str]) -> int:
    """Run the subcommand; say so in one line if its output cannot be written."""
    if "stdout" in closed and args.run is not command_clean:
        raise Refused(ExitCode.FAILURE, "stdout is closed (>&-): there is nowhere to print")
    try:
        status = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read our output has stopped (`shmm.py ls | head -1`): end
        # as ipcs does, killed by SIGPIPE, without a word. What is still
        # buffered goes nowhere, so that the flush at exit cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        die_by(signal.SIGPIPE)
        raise
    except OSError as err:
        if err.filename is not None:  # a system call of ours: it names itself
            raise
        raise Refused(ExitCode.FAILURE, f"writing to stdout: {describe_errno(err)}") from None
    return status


if __name__ == "__main__":
    sys.exit(main())
