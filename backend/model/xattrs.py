"""Extended attributes: the one definition of what a node may carry, for the mount,
the wire and the server.

Limits are ext4's as the kernel enforces them (a name up to 255 bytes, a value up to
64 KiB), plus a bound on all of a node's attributes together, so a journal entry, which
carries them, stays small. Namespaces: `user.`, `trusted.` and `security.` are stored
(the kernel already checked who may write each). Two kinds of name are answered
EOPNOTSUPP, as a filesystem without them answers: `system.` names (POSIX ACLs, which the
kernel would not enforce for us) and `security.selinux` (a label the local policy gives,
meaningless on another device). That answer is also what keeps `ls -l` fast: ls asks
for both on every entry, and stops asking for the rest of the listing once a device says
it does not support them (coreutils' getfilecon_cache and file_has_acl_cache).
Values travel and are kept as base64 text.
"""

from __future__ import annotations

import base64
import binascii
import errno

from ..errors import CloudFsError

NAME_MAX = 255
VALUE_MAX = 64 * 1024
TOTAL_MAX = 256 * 1024
NAMESPACES = ("user.", "trusted.", "security.")
NOT_KEPT = ("system.", "security.selinux")


class XattrError(CloudFsError, ValueError):
    """A name or value a local disk would refuse too; `errno` is what it would answer.
    A ValueError too, so the wire models' validators report it as bad input."""

    def __init__(self, message: str, errno_: int) -> None:
        super().__init__(message)
        self.errno = errno_


def check_name(name: str) -> str:
    if not name:
        raise XattrError("an extended attribute needs a name", errno.EINVAL)
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise XattrError(f"extended attribute name {name!r} is not valid UTF-8", errno.EINVAL) from None
    if len(raw) > NAME_MAX:
        raise XattrError(f"extended attribute name is {len(raw)} bytes, at most {NAME_MAX}", errno.ERANGE)
    if "\0" in name:
        raise XattrError("an extended attribute name may not contain NUL", errno.EINVAL)
    if not name.startswith(NAMESPACES) or name.startswith(NOT_KEPT):
        raise XattrError(f"extended attribute {name!r}: only user., trusted. and security. names are kept "
                         "(no ACLs, no SELinux labels)", errno.EOPNOTSUPP)
    return name


def total_size(xattrs: dict[str, str]) -> int:
    """Bytes of names and (decoded) values together."""
    return sum(len(k.encode()) + len(v) * 3 // 4 for k, v in xattrs.items())


def encode(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def decode(text: str) -> bytes:
    return base64.b64decode(text)


def check_all(xattrs: dict[str, str]) -> dict[str, str]:
    """Validate a whole set (as sent over the wire); raise ValueError naming the culprit."""
    for name, text in xattrs.items():
        check_name(name)
        try:
            value = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise XattrError(f"extended attribute {name!r}: the value is not base64", errno.EINVAL) from None
        if len(value) > VALUE_MAX:
            raise XattrError(f"extended attribute {name!r}: {len(value)} bytes, at most {VALUE_MAX}", errno.E2BIG)
    if total_size(xattrs) > TOTAL_MAX:
        raise XattrError(f"extended attributes take more than {TOTAL_MAX} bytes in all", errno.ENOSPC)
    return xattrs
