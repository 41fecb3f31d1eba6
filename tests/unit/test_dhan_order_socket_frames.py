"""The order socket's login frame and its bad-login answer."""

from __future__ import annotations

import json

from broker.dhan.order_socket import bad_login_frame, login_frame, refusal_reason


def test_login_frame_is_dhans_shape() -> None:
    assert json.loads(login_frame("1000000001", "tok")) == {
        "LoginReq": {"MsgCode": 42, "ClientId": "1000000001", "Token": "tok"},
        "UserType": "SELF"}


def test_bad_login_answer_carries_code_50_and_its_reason() -> None:
    frame = bad_login_frame(808)
    assert len(frame) == 10 and frame[0] == 50
    assert refusal_reason(frame) == 808


def test_other_binary_frames_are_not_refusals() -> None:
    assert refusal_reason(b"") is None
    assert refusal_reason(b"\x02" + b"\x00" * 15) is None
    assert refusal_reason(b"\x32\x00") == 0  # a short code-50 frame without a readable reason
