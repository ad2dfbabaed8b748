-- The CheXpert label each of the given labels corresponds to, as ingest registered it in label_names
-- (NIH `Effusion`: `Pleural Effusion`; a CheXpert label: itself; none: left out).
-- internal
-- param labels VARCHAR: (a list of label names, bound as VARCHAR[])
SELECT label, chexpert FROM label_names
WHERE list_contains($labels::VARCHAR[], label) AND chexpert IS NOT NULL
ORDER BY position;
