-- When each issuer's newest revocation was recorded, in one index read: the upkeep compares
-- it with the newest CRL's thisUpdate and signs the CRL a failed publication still owes.
-- Partial: only revocations write to it.
CREATE INDEX certificates_revoked_at ON certificates (issuer, revoked_at) WHERE status = 'revoked';
