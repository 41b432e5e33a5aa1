-- Each issued invoice and credit note, rendered once after it is issued: the SHA-256 of its
-- PDF (the same document renders to the same bytes every time, so the hash identifies what
-- the customer received), and whether it was emailed. invoicing_service/app/issued_documents.py.
CREATE TABLE IF NOT EXISTS issued_documents (
    document_id  uuid        PRIMARY KEY,          -- the invoice's or credit note's id
    kind         text        NOT NULL CHECK (kind IN ('invoice', 'credit_note')),
    account_id   uuid        NOT NULL,
    number       text        NOT NULL,
    sha256       text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    pdf_bytes    integer     NOT NULL CHECK (pdf_bytes > 0),
    emailed_to   text[]      NOT NULL DEFAULT '{}',
    rendered_at  timestamptz NOT NULL DEFAULT now()
);
