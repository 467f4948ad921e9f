"""gunicorn's gthread worker, taking turns with its siblings at new connections (gunicorn.conf.py).

All workers wait on one listening socket, and the first to call accept() gets a new connection: the
worker already running usually wins, and a client that opens its kept-alive connections all at once
(a load generator, nginx keeping upstream connections) had most of them land on one worker, whose GIL
then made its webhooks queue while the other workers idled (measured: one worker at 66% of a core,
the others at 6-11%). Here a worker that takes a connection while it holds another leaves the next
ones to its siblings for a moment. A socket per worker (SO_REUSEPORT) would spread them too, but a
reload then resets the connections waiting at the old workers' sockets.
"""
import time

from gunicorn.workers.gthread import ThreadWorker

# Long enough for an idle sibling to be scheduled and take the next connection. A worker with nothing
# else in hand never pauses: GitLab opens a connection per delivery and closes it after the answer.
ACCEPT_PAUSE_SECONDS = 0.005


class BalancedThreadWorker(ThreadWorker):
    clock = staticmethod(time.monotonic)
    _paused_until = 0.0

    def accept(self, listener):
        held = self.nr_conns
        super().accept(listener)
        accepted = self.nr_conns > held              # not when a sibling was quicker
        if accepted and held and self.cfg.workers > 1:
            self._paused_until = self.clock() + ACCEPT_PAUSE_SECONDS
            self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled):
        # gthread's loop turns accepting back on at every turn: not until the pause is over.
        if enabled and self.clock() < self._paused_until:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout):
        pause_left = self._paused_until - self.clock()
        if pause_left > 0:                        # wake when the pause ends, not a second later
            timeout = min(timeout, pause_left)
        super().wait_for_and_dispatch_events(timeout)
