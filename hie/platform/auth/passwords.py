"""Password hashing with argon2id: at most HIE_LOGIN_CONCURRENCY hashes at once per process, and logins checked at
no more than HIE_LOGIN_RATE a second per host; cost set by configuration so tests can run cheaply."""

from __future__ import annotations

import fcntl
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from flask import current_app

MIN_PASSWORD_LENGTH = 10
LOGIN_SLOT_WAIT = 0.05  # seconds a login waits for a hashing slot before it is answered 429
BUSY_RETRY_AFTER = 1  # seconds a login refused for want of a slot is told to wait

_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


class HashingBusy(Exception):
    """No hashing slot, or the host's login rate spent: the login is refused at once instead of queueing."""

    def __init__(self, message: str, retry_after: int = BUSY_RETRY_AFTER) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def admit_login() -> None:
    """The host's login budget, shared by every process under one HIE_HOME through a locked file: a generic cell
    rate algorithm (a burst of HIE_LOGIN_BURST, then HIE_LOGIN_RATE a second). HashingBusy when it is spent."""
    config = current_app.config["HIE"]
    interval = 1.0 / config.login_rate
    tolerance = interval * (config.login_burst - 1)
    path = config.home / "run" / "login-rate"
    path.parent.mkdir(exist_ok=True)
    with path.open("a+") as state:
        fcntl.flock(state, fcntl.LOCK_EX)  # released when the file closes, or when its process dies
        state.seek(0)
        now = time.monotonic()  # one clock for every process of the host
        try:
            arrival = float(state.read() or now)
        except ValueError:
            arrival = now
        if not now - 1 <= arrival <= now + tolerance + interval:  # garbled, or written before the host restarted
            arrival = now
        arrival = max(arrival, now)
        if arrival - now > tolerance:
            wait = math.ceil(arrival - now - tolerance)
            raise HashingBusy(f"this host's login rate ({config.login_rate:g} a second) is spent", wait)
        state.seek(0)
        state.truncate()
        state.write(repr(arrival + interval))


def _semaphore(size: int) -> threading.BoundedSemaphore:
    """The process's slots for one configured size (one size per process in practice; tests change it)."""
    semaphore = _slots.get(size)
    if semaphore is None:
        with _slots_lock:
            semaphore = _slots.setdefault(size, threading.BoundedSemaphore(size))
    return semaphore


@contextmanager
def hashing_slot(wait: float | None) -> Iterator[None]:
    """Hold one hashing slot; HashingBusy if none frees within wait seconds (None: wait as long as it takes)."""
    semaphore = _semaphore(current_app.config["HIE"].login_concurrency)
    if not semaphore.acquire(timeout=wait):
        raise HashingBusy(f"all {current_app.config['HIE'].login_concurrency} password-hashing slots are busy")
    try:
        yield
    finally:
        semaphore.release()


def _hasher() -> PasswordHasher:
    config = current_app.config["HIE"]
    return PasswordHasher(time_cost=config.argon2_time_cost, memory_cost=config.argon2_memory_kib,
                          parallelism=config.argon2_parallelism)


def hash_password(password: str, wait: float | None = None) -> str:
    """argon2id hash with a fresh salt, in a slot; accounts are made by administrators, who may wait for one."""
    with hashing_slot(wait):
        return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Constant-time check, within the host's login rate and in a slot, or HashingBusy at once; a malformed stored
    hash counts as a mismatch."""
    admit_login()
    with hashing_slot(LOGIN_SLOT_WAIT):
        try:
            return _hasher().verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if password.isdigit() or password.isalpha():
        return "must mix letters with digits or symbols"
    return None
