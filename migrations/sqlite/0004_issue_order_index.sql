-- Reservations take MAX(issue_order) + 1; without an index that was a scan of every
-- certificate ever issued, so issuance slowed as the table grew.
CREATE INDEX certificates_by_issue_order ON certificates (issue_order);
