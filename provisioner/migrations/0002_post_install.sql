-- Post-install: a deploying machine first has its image written
-- (image_written_ms), then its installed system phones home with its SSH
-- host keys, then its agent enrolls as a stack manager host (host_id).
ALTER TABLE machines ADD COLUMN image_written_ms INTEGER;
ALTER TABLE machines ADD COLUMN ssh_host_keys TEXT;
ALTER TABLE machines ADD COLUMN host_id TEXT;
