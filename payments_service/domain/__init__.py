"""The payments domain: pure rules, no I/O (signatures, provider events, VAT, refunds)."""
