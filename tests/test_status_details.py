"""A failed call's rich status is read in one place (`dllmserve.client.errors.status_details`):
the client's typed errors, its retry rule and the HTTP gateway's answers all agree on the field,
the retry delay and whether the status is the request's own final one."""

from __future__ import annotations

import grpc
import pytest

from dllmserve.client import errors as ce
from dllmserve.client.channels import retryable
from dllmserve.gateway.errors import from_rpc
from dllmserve.scheduler import errors as se


def as_call_error(e: se.RpcError) -> ce.ServiceError:
    """The status a handler raised, as a client sees it (code, message, trailers)."""
    st = e.status
    return ce.ServiceError(st.code, st.details, st.trailing_metadata)


def test_a_bad_request_names_the_field_everywhere():
    err = as_call_error(se.invalid_argument("sampling_params.gen_length", "must be in [1, 64]"))
    assert ce.status_details(err) == ce.StatusDetails(field="sampling_params.gen_length")
    typed = ce.from_rpc_error(err)
    assert isinstance(typed, ce.ValidationError) and typed.field == "sampling_params.gen_length"
    api = from_rpc(err, chat=False)
    assert (api.status, api.param) == (400, "max_tokens")
    assert api.message == "max_tokens: must be in [1, 64]"


def test_a_field_without_bad_request_comes_from_the_message_head():
    err = ce.ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "sampling_params.steps: too many")
    assert ce.status_details(err).field == "sampling_params.steps"
    assert ce.from_rpc_error(err).field == "sampling_params.steps"
    prose = ce.ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "the prompt is empty: say more")
    assert ce.status_details(prose).field == "" and from_rpc(prose, chat=True).param is None


@pytest.mark.parametrize("delay", [2.5, None])
def test_the_retry_hint_is_the_same_for_the_client_and_the_gateway(delay):
    err = as_call_error(se.resource_exhausted("queue full", delay))
    assert ce.status_details(err).retry_after == delay
    assert ce.from_rpc_error(err).retry_after == delay
    api = from_rpc(err, chat=False)
    assert api.retry_after_s == delay
    assert api.status == (429 if delay is not None else 400)  # no hint: retrying cannot help


def test_only_a_transport_unavailable_is_retried():
    final = as_call_error(se.from_code("UNAVAILABLE", "no ready worker took it"))
    assert ce.status_details(final).final and not retryable(final)
    plain = as_call_error(se.simple(grpc.StatusCode.UNAVAILABLE, "draining"))
    assert not ce.status_details(plain).final and retryable(plain)
    assert retryable(ce.ServiceError(grpc.StatusCode.UNAVAILABLE, "connection refused"))


def test_details_that_do_not_parse_leave_the_plain_message():
    junk = (("grpc-status-details-bin", b"\xff\xff not a status"),)
    err = ce.ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, "queue full", junk)
    assert ce.status_details(err) == ce.StatusDetails()
    assert from_rpc(err, chat=False).message == "queue full"
