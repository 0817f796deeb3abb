"""What a Web Push subscription looks like on the wire (RFC 8030 / 8291).

A browser's ``PushSubscription.toJSON()`` is ``{endpoint, keys: {p256dh, auth}}``:
the push service URL, the browser's P-256 public key (65 bytes, uncompressed) and
its 16-byte auth secret, both base64url. The patterns hold exactly those (and are
valid ECMAScript too: the OpenAPI document uses them).
"""

from __future__ import annotations

from typing import Final

MAX_ENDPOINT: Final = 2048
ENDPOINT_PATTERN: Final = r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[\x21-\x7e]*)?"
# 0x04 then 64 bytes: "B", a character for 00xxxx, 84 free ones, one whose low two
# bits are zero; optionally padded.
P256DH_PATTERN: Final = r"B[A-P][A-Za-z0-9_-]{84}[AEIMQUYcgkosw048]=?"
# 16 bytes: 21 characters, one whose low four bits are zero; optionally padded.
AUTH_PATTERN: Final = r"[A-Za-z0-9_-]{21}[AQgw](==)?"
