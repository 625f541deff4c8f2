"""Exceptions of the provision flow (情報提供 and its 自動応答不可 review)."""

from __future__ import annotations

from chukan.gateway.core.errors import ConflictError, NotFoundError


class ReviewUnknownError(NotFoundError):
    """No held provision with this query id."""

    code = "review_unknown"


class ReviewDecidedError(ConflictError):
    """The held provision was already approved or refused: a decision is taken once."""

    code = "review_already_decided"
