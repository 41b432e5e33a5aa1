"""The invoicing domain: invoices and credit notes, VAT, rounding and document numbers.

Pure: no I/O, no framework imports. Money is integer micro-units (10^-6 of the major unit)."""
