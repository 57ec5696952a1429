-- Issuing-CA rollover: an issuer is a generation's label, `operational` for the first and
-- `operational-2`, `operational-3`, ... after each `medid ca rotate`.
ALTER TABLE certificates DROP CONSTRAINT certificates_issuer_check;
ALTER TABLE certificates ADD CONSTRAINT certificates_issuer_check
    CHECK (issuer ~ '^(device-identity|operational)(-[2-9]|-[1-9][0-9]+)?$');
ALTER TABLE crl_numbers DROP CONSTRAINT crl_numbers_issuer_check;
ALTER TABLE crl_numbers ADD CONSTRAINT crl_numbers_issuer_check
    CHECK (issuer ~ '^(device-identity|operational)(-[2-9]|-[1-9][0-9]+)?$');
