-- Progress of `koinonia rotate-key` (common/privacy/rotation.py): per target key and sealed table, the
-- primary key of the last row re-sealed (keyset cursor), committed with each batch, so a killed run
-- continues where it stopped and a finished table is not scanned again for the same key.
-- No plaintext: a key id (4 bytes, as every sealed value carries) and row keys (opt_outs: its lookup hash, hex).
CREATE TABLE key_rotations (
    target_key_id  bytea NOT NULL CHECK (length(target_key_id) = 4),
    table_name     text NOT NULL,
    cursor         text[],                    -- the last row's primary key, as text; NULL: not started
    resealed       bigint NOT NULL DEFAULT 0, -- values re-sealed for this key, over every run
    skipped        bigint NOT NULL DEFAULT 0, -- values changed or erased meanwhile, left as they were
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    PRIMARY KEY (target_key_id, table_name)
);
