"""The engine's step loop in one thread, fed by the server's requests.

Requests from the event loop are queued; at each step the worker adds the new ones to the engine
(they join the running batch) and applies cancels (a client that went away), then steps once and
hands each delta to its request's asyncio queue. The engine is touched by this thread only.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field

from r1lite.engine import Delta, Request


class Busy(Exception):
    """Every generation slot and queue place is taken (HTTP 429)."""


class Draining(Exception):
    """The server is shutting down and admits no new request (HTTP 503)."""


@dataclass
class Ticket:
    """One request's place in the worker: its engine request and where its deltas go."""

    request: Request
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class Worker:
    """Runs ``engine.step()`` while there is work. ``max_concurrency`` requests decode at once;
    up to ``max_queue`` more wait; beyond that, :class:`Busy`.

    ``load`` (instead of ``engine``): a function that opens the backend, called in the worker's own
    thread before it steps; :meth:`loaded_backend` waits for it. The thread that steps the engine
    should be the one that loaded it, and the only one that runs parallel work: libgomp counts
    every thread that ever led a parallel region, and once it counts more than the machine has
    cores it stops spinning between regions, and a decode step (many short regions) slows down
    (docs/benchmarks.md, "Serving under load").
    """

    def __init__(self, engine, max_concurrency: int, max_queue: int, load=None):
        self.engine, self.max_concurrency, self.max_queue = engine, max_concurrency, max_queue
        self.backend = None
        self.load_error: BaseException | None = None
        self.loaded = threading.Event()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.incoming: list[Ticket] = []
        self.cancels: list[str] = []
        self.tickets: dict[str, Ticket] = {}
        self.draining = False
        self.stopped = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(load,), name="r1lite-engine", daemon=True)
        self.thread.start()

    def _main(self, load) -> None:
        try:
            if load is not None:
                self.backend = load()
                self.engine = self.backend.engine
        except BaseException as e:  # noqa: BLE001 - handed to the caller of loaded_backend
            self.load_error = e
        finally:
            self.loaded.set()
        if self.load_error is None:
            self._run()

    def loaded_backend(self):
        """The backend ``load`` opened (its error, raised here, where it failed)."""
        self.loaded.wait()
        if self.load_error is not None:
            raise self.load_error
        return self.backend

    @property
    def in_flight(self) -> int:
        return len(self.tickets)

    @property
    def queued(self) -> int:
        """Requests admitted but not yet decoding."""
        return max(0, len(self.tickets) - self.max_concurrency)

    def submit(self, request: Request) -> Ticket:
        """Queue a request (from the event loop); its deltas arrive on the ticket's queue."""
        with self.lock:
            if self.draining:
                raise Draining()
            if len(self.tickets) >= self.max_concurrency + self.max_queue:
                raise Busy()
            ticket = Ticket(request, asyncio.get_running_loop())
            request.id = request.id or f"req-{id(ticket):x}"
            self.tickets[request.id] = ticket
            self.incoming.append(ticket)
        self.wake.set()
        return ticket

    def cancel(self, request_id: str) -> None:
        with self.lock:
            if request_id in self.tickets:
                self.cancels.append(request_id)
        self.wake.set()

    def drain(self) -> None:
        """Admit no new request; the ones in flight finish."""
        with self.lock:
            self.draining = True

    def stop(self) -> None:
        self.stopped = True
        self.wake.set()
        self.thread.join(timeout=30)

    def _run(self) -> None:
        engine = self.engine
        running: set[str] = set()
        while not self.stopped:
            with self.lock:
                room = self.max_concurrency - len(running)
                admit, self.incoming = self.incoming[:max(0, room)], self.incoming[max(0, room):]
                cancels, self.cancels = self.cancels, []
            for ticket in admit:
                try:
                    engine.add(ticket.request)
                except Exception as e:  # a request the engine refuses ends alone
                    self._finish(ticket.request.id, e)
                    continue
                running.add(ticket.request.id)
            for rid in cancels:
                engine.cancel(rid)
                if rid not in running:  # cancelled while still queued here
                    self._finish(rid, Delta(rid, 0, [], "", "cancelled", None))
            if not engine.has_work:
                self.wake.wait(timeout=0.5)
                self.wake.clear()
                continue
            try:
                deltas = engine.step()
            except BaseException as e:  # a failed step ends every request in it with the error
                self.error = e
                for rid in list(running):
                    engine.cancel(rid)
                    self._finish(rid, e)
                running.clear()
                engine.clear()
                continue
            for rid, e in engine.failed.items():  # a prompt that failed alone ends alone
                running.discard(rid)
                self._finish(rid, e)
            engine.failed.clear()
            for d in deltas:
                ticket = self.tickets.get(d.request_id)
                if ticket is None:
                    continue
                if d.completion is not None:
                    running.discard(d.request_id)
                    self._finish(d.request_id, d)
                else:
                    ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, d)

    def _finish(self, rid: str, last) -> None:
        with self.lock:
            ticket = self.tickets.pop(rid, None)
        if ticket is not None:
            ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, last)
