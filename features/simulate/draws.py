"""Random draws owned by users: common random numbers for counterfactual futures.

The generator draws from one stream per chunk, so the values a user gets depend on how many were drawn for the
users before it; treating one user would move everybody else's future. :class:`UserDraws` stands in for a
``numpy.random.Generator`` in the simulator's own functions (:func:`features.simulate.process.draw_sessions`,
:func:`features.simulate.events.session_rows`): every call draws one fresh block of shape ``(n, width)`` for the
whole chunk and hands each requested value from the row of the user it belongs to (at the position of the event
row within that user's session, for per-row draws). A user's values therefore depend only on the stream, the
user's position in the chunk and the order of calls (fixed by the code, not by the data), never on what other
users do. The distributions are those of the Generator methods they replace.
"""

from __future__ import annotations

import numpy as np

from features.simulate.process import Sessions

MAX_SESSION_ROWS = 19
"""Most event rows one session can have: a visit, up to 15 views, a fav, a cart and a buy."""


class DrawLayoutError(RuntimeError):
    """A draw was requested with a size that matches no bound layout (the simulator's code changed shape)."""


class UserDraws:
    """A ``numpy.random.Generator`` look-alike (``random``, ``normal``, ``uniform``, ``exponential``) whose
    values are owned by users.

    ``rng`` is the stream, ``n`` the chunk's number of users and ``width`` the positions per user (1 for one
    value per user and call; :data:`MAX_SESSION_ROWS` for per-row draws). Bind the requesters first:
    :meth:`bind` for one value per session user (requests of size ``m``), :meth:`bind_rows` to also serve
    requests of one value per event row and one per purchase. A request whose size fits several layouts at once
    gets the same values from each (a session with one row has its row at position 0, and when every session
    bought, the buyers are the session users).
    """

    def __init__(self, rng: np.random.Generator, n: int, width: int = 1) -> None:
        self._rng, self._n, self._width = rng, n, width
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def bind(self, idx: np.ndarray) -> UserDraws:
        """Serve requests of size ``len(idx)``: one value for each user position in ``idx`` (shape ``(m,)``)."""
        idx = np.asarray(idx, dtype=np.int64)
        self._layouts = {idx.shape[0]: (idx, np.zeros(idx.shape[0], dtype=np.int64))}
        return self

    def bind_rows(self, idx: np.ndarray, sessions: Sessions, bought: np.ndarray) -> UserDraws:
        """Serve the draws of :func:`features.simulate.events.session_rows` for sessions of users ``idx``.

        Sizes served: ``m`` sessions (and ``(k, m)`` for ``k`` values per session), the session's event rows in
        session order (``visit + views + fav + cart + buy`` per session), and one per purchase.
        """
        if sessions.visit is None:
            raise ValueError("bind_rows needs sessions drawn with content=True")
        idx = np.asarray(idx, dtype=np.int64)
        k = sessions.visit.astype(np.int64) + sessions.n_views + sessions.fav + (sessions.cart | bought) + bought
        if k.size and int(k.max()) > self._width:
            raise DrawLayoutError(f"a session has {int(k.max())} rows, more than the width {self._width}")
        row_user = np.repeat(idx, k)
        row_pos = np.arange(row_user.shape[0]) - np.repeat(np.cumsum(k) - k, k)
        buyers = idx[bought]
        self._layouts = {
            buyers.shape[0]: (buyers, np.zeros(buyers.shape[0], dtype=np.int64)),
            row_user.shape[0]: (row_user, row_pos),
            idx.shape[0]: (idx, np.zeros(idx.shape[0], dtype=np.int64)),
        }
        return self

    def _pick(self, block: np.ndarray, size: int | tuple[int, ...] | None) -> np.ndarray:
        if size is None:
            raise DrawLayoutError("UserDraws serves arrays only; a scalar draw has no owner")
        shape = (size,) if isinstance(size, int | np.integer) else tuple(size)
        layout = self._layouts.get(int(shape[-1]))
        if layout is None:
            raise DrawLayoutError(f"no bound layout serves a draw of shape {shape}")
        owner, pos = layout
        if len(shape) == 1:
            return block[owner, pos]
        if len(shape) == 2 and shape[0] <= self._width and not pos.any():
            return block[owner, : shape[0]].T.copy()
        raise DrawLayoutError(f"no bound layout serves a draw of shape {shape}")

    def random(self, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        return self._pick(self._rng.random((self._n, self._width)), size)

    def normal(
        self, loc: float | np.ndarray = 0.0, scale: float | np.ndarray = 1.0, size: int | tuple[int, ...] | None = None
    ) -> np.ndarray:
        return loc + scale * self._pick(self._rng.standard_normal((self._n, self._width)), size)

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        return low + (high - low) * self._pick(self._rng.random((self._n, self._width)), size)

    def exponential(self, scale: float = 1.0, size: int | tuple[int, ...] | None = None) -> np.ndarray:
        return scale * self._pick(self._rng.standard_exponential((self._n, self._width)), size)
