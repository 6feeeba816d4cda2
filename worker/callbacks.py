"""What a submission's callback must satisfy before anything is written: an allowed URL on a
public address, and a way to sign its events. A job's own secret is sealed here."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import SecretStr

from api_contracts.jobs import InvalidFieldError
from worker.secret_box import SecretBox
from worker.ssrf import CallbackRefusedError, Resolver, check_callback_url, resolve_host


class InvalidCallbackError(InvalidFieldError):
    """A submission's callback field is refused; `field` names it for the 422."""


@dataclass(frozen=True)
class CallbackPolicy:
    """The operator's rules for callbacks, and the box that seals per-job secrets."""

    allow_http: bool
    allow_private: bool
    # Whether GMIQ_WEBHOOK_SECRETS is set; without it each job must bring its own secret.
    has_operator_secrets: bool
    box: SecretBox
    resolve: Resolver = resolve_host

    def check(self, callback_url: str | None, callback_secret: SecretStr | None) -> str | None:
        """Refuse what may not be submitted; the sealed secret to store, if one was given."""
        if callback_url is None:
            if callback_secret is not None:
                raise InvalidCallbackError("callback_secret", "is only used with a callback_url")
            return None
        try:
            check_callback_url(callback_url, self.allow_http, self.allow_private, self.resolve)
        except CallbackRefusedError as exc:
            raise InvalidCallbackError("callback_url", str(exc)) from None
        if callback_secret is None:
            if not self.has_operator_secrets:
                raise InvalidCallbackError(
                    "callback_secret",
                    "is required: this deployment has no operator webhook secrets",
                )
            return None
        return self.box.seal(callback_secret.get_secret_value())
