-- Brings a schema-version-2 store to version 3 (`embedstore store upgrade`): patients, CheXpert
-- counterparts of labels, how each dataset's labels were read, and positive NULL for a left-out pair.
-- Every dataset of a version-2 store was read with the CheXpert label set and the study's rule (zeros).
-- internal
ALTER TABLE samples ADD COLUMN patient VARCHAR;
ALTER TABLE label_names ADD COLUMN chexpert VARCHAR;
ALTER TABLE datasets ADD COLUMN options JSON;
ALTER TABLE labels ALTER COLUMN positive DROP NOT NULL;
UPDATE label_names SET chexpert = label WHERE list_contains($chexpert_labels, label);
UPDATE datasets SET options = '{"label_set": "chexpert", "uncertain": "zeros"}';
UPDATE meta SET value = '3' WHERE key = 'schema_version';
