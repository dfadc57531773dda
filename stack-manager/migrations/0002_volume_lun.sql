-- The LUN a storage node exports each volume on, as it reports it: tgt
-- keeps LUN 0 for its controller, other targets use 0 for data.
ALTER TABLE volumes ADD COLUMN lun INTEGER NOT NULL DEFAULT 0;
