# Copyright (c) tokenfleet.pki contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""When a certificate is due for renewal (``renew_before``), one rule for scep_enroll, check mode, the roles and the
x509_facts filter of the report. Private to the collection."""

from __future__ import annotations

import datetime
import re

DEFAULT_DAYS = 30
DEFAULT_SHARE = 1.0 / 3
"""Default window: DEFAULT_DAYS, but at most this share of the lifetime, so that a short-lived certificate (step-ca
issues 24-hour ones) is not due right after it is issued."""

_DAYS = re.compile(r'^\s*(\d+)\s*$')
_SHARE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*%\s*$')


class RenewBeforeError(ValueError):
    """renew_before is neither days nor a share of the lifetime."""


def _duration_text(value):
    seconds = value.total_seconds()
    if seconds >= 86400:
        return '%.1f days' % (seconds / 86400.0)
    return '%.1f h' % (seconds / 3600.0)


class RenewBefore(object):
    """``renew_before``: None (the default window), whole days (an int, or digits) or a share of the lifetime (``"33%"``).

    Due means: at or after ``not_after - window``; the window of a share is that share of ``not_after - not_before``.
    """

    def __init__(self, value=None, option='renew_before'):
        self.value = value
        self.days = self.share = None
        if value is None:
            return
        if isinstance(value, bool):
            raise RenewBeforeError('%s must be a number of days or a share of the lifetime such as "33%%", not %r'
                                   % (option, value))
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int):
            days = value
        elif isinstance(value, str) and _DAYS.match(value):
            days = int(_DAYS.match(value).group(1))
        elif isinstance(value, str) and _SHARE.match(value):
            share = float(_SHARE.match(value).group(1))
            if share > 100:
                raise RenewBeforeError('%s must be a share of the lifetime from 0%% to 100%%, not %s' % (option, value.strip()))
            self.share = share
            return
        else:
            raise RenewBeforeError('%s must be a number of days (for example 30) or a share of the lifetime (for example '
                                   '"33%%"), not %r' % (option, value if not isinstance(value, str) else value[:40]))
        if days < 0:
            raise RenewBeforeError('%s must be zero or more days (got %d)' % (option, days))
        self.days = days

    def window(self, not_before, not_after):
        """How long before not_after the certificate becomes due."""
        lifetime = max(not_after - not_before, datetime.timedelta(0))
        if self.days is not None:
            return datetime.timedelta(days=self.days)
        if self.share is not None:
            return lifetime * (self.share / 100.0)
        return min(datetime.timedelta(days=DEFAULT_DAYS), lifetime * DEFAULT_SHARE)

    def renew_at(self, not_before, not_after):
        return not_after - self.window(not_before, not_after)

    def due(self, not_before, not_after, now):
        return now >= self.renew_at(not_before, not_after)

    def describe(self, not_before, not_after):
        """'renew_before is ...' for a decision's reason."""
        if self.days is not None:
            return 'renew_before is %d' % self.days
        window = _duration_text(self.window(not_before, not_after))
        if self.share is not None:
            return 'renew_before is %s%% of the lifetime (%s)' % (('%g' % self.share), window)
        return 'renew_before is the default: %d days, at most a third of the lifetime (%s)' % (DEFAULT_DAYS, window)


def certificate_due(certificate, now, renew_before=None):
    """(due, renew_at) of a cryptography certificate under ``renew_before`` (a RenewBefore or its raw value)."""
    rule = renew_before if isinstance(renew_before, RenewBefore) else RenewBefore(renew_before)
    not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    return rule.due(not_before, not_after, now), rule.renew_at(not_before, not_after)
