"""The words of the contract (SPEC §1 and §2): purposes, channels, recipients, bases, categories.

Everything here is data. The feed parser, the domain model and the rules all read from these
tables, so a new purpose or fact type is added in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

PURPOSE_CHANNELS: Final[dict[str, frozenset[str]]] = {
    "marketing": frozenset({"email", "post"}),
    "affiliate_sharing": frozenset({"email", "post"}),
    "market_research": frozenset({"email", "post"}),
    "personalisation": frozenset({"web"}),
}
PURPOSES: Final = frozenset(PURPOSE_CHANNELS)
CONSENT_CHANNELS: Final = frozenset().union(*PURPOSE_CHANNELS.values())

RECIPIENT_KINDS: Final = frozenset(
    {
        "card_issuer",
        "identity_verification",
        "credit_reference_agency",
        "carrier",
        "affiliate",
        "acquirer",
    }
)
LAWFUL_BASES: Final = frozenset({"contract", "consent", "legitimate_interests", "legal_obligation"})
DATA_CATEGORIES: Final = frozenset(
    {"name", "email", "phone", "postal_address", "card", "order_details"}
)
# Categories that are personal data held in encrypted form by the ledger itself.
PERSONAL_FIELDS: Final = ("name", "email", "phone", "address")
ADDRESS_FIELDS: Final = ("line1", "city", "postcode", "country")


@dataclass(frozen=True)
class DisclosureRule:
    """What a fact type implies: who receives which data, for what, on which basis."""

    recipient_field: str
    recipient_kind: str
    categories: tuple[str, ...] | None  # None: the categories are listed on the fact
    purpose: str
    basis: str


DISCLOSURES: Final[dict[str, DisclosureRule]] = {
    "payment.authorisation": DisclosureRule(
        "issuer", "card_issuer", ("name", "card", "postal_address"), "payment", "contract"
    ),
    "identity.check": DisclosureRule(
        "provider",
        "identity_verification",
        ("name", "postal_address"),
        "identity_verification",
        "consent",
    ),
    "cra.disclosure": DisclosureRule(
        "agency",
        "credit_reference_agency",
        ("name", "postal_address", "order_details"),
        "fraud_prevention",
        "legitimate_interests",
    ),
    "order.dispatched": DisclosureRule(
        "carrier", "carrier", ("name", "postal_address", "phone"), "delivery", "contract"
    ),
    "affiliate.disclosure": DisclosureRule(
        "affiliate", "affiliate", None, "affiliate_marketing", "consent"
    ),
    "transfer.disclosure": DisclosureRule(
        "acquirer", "acquirer", None, "business_transfer", "legitimate_interests"
    ),
}

# Contacts that are judged against a consent purpose on the contact's channel.
CONTACT_PURPOSE: Final[dict[str, str]] = {
    "marketing.contact": "marketing",
    "research.contact": "market_research",
}

RULES: Final = (
    "affiliate_without_consent",
    "marketing_without_consent",
    "research_without_consent",
    "dispatch_without_payment",
    "dispatch_after_failed_verification",
    "transfer_without_initiation",
    "after_erasure",
)
# What a violation of each rule is, in the auditor's report: SPEC §3's words, and the
# notification rule beyond it (`ledger.privacy`, GDPR Art. 19).
RULE_MEANINGS: Final[dict[str, str]] = {
    "affiliate_without_consent": (
        "an affiliate.disclosure when affiliate_sharing was not given on any channel"
    ),
    "marketing_without_consent": "a marketing.contact on a channel where marketing was not given",
    "research_without_consent": (
        "a research.contact on a channel where market_research was not given"
    ),
    "dispatch_without_payment": (
        "an order.dispatched before any authorised payment.authorisation for that order"
    ),
    "dispatch_after_failed_verification": (
        "an order.dispatched whose order's latest identity.check before it failed"
    ),
    "transfer_without_initiation": (
        "a transfer.disclosure with no earlier transfer.initiated for that acquirer"
    ),
    "after_erasure": (
        "a disclosure or contact concerning a customer at or after their subject.erased"
    ),
    "recipient_not_notified": (
        "an erasure or rectification that a recipient of the data (or the acquirer of an "
        "export that held it) was not told of within 30 days (GDPR Art. 19)"
    ),
}
