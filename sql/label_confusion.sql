-- Per-label confusion counts, precision, recall and F1 (0 where undefined, as zero_division=0) of
-- `_scored` against `_thresholds`.
-- internal
WITH o AS (
    SELECT s.label, s.score >= t.threshold AS predicted, s.truth = 1 AS positive
    FROM _scored s JOIN _thresholds t USING (label)
), c AS (
    SELECT label,
           count(*) FILTER (WHERE predicted AND positive) AS tp,
           count(*) FILTER (WHERE predicted AND NOT positive) AS fp,
           count(*) FILTER (WHERE NOT predicted AND positive) AS fn,
           count(*) FILTER (WHERE NOT predicted AND NOT positive) AS tn
    FROM o GROUP BY label
)
SELECT label, tp, fp, fn, tn,
       CASE WHEN tp + fp = 0 THEN 0.0 ELSE tp / (tp + fp) END AS precision,
       CASE WHEN tp + fn = 0 THEN 0.0 ELSE tp / (tp + fn) END AS recall,
       CASE WHEN 2 * tp + fp + fn = 0 THEN 0.0 ELSE 2 * tp / (2 * tp + fp + fn) END AS f1
FROM c ORDER BY label;
