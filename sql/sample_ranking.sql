-- Per-sample label-ranking figures of a scored multi-label table `_scored(sample_id, label, score, truth)`:
-- LRAP, coverage error and ranking loss exactly as scikit-learn defines them (ties count against).
-- internal
WITH ranked AS (
    SELECT sample_id, truth,
           count(*) OVER w_desc AS rank_all,
           sum(truth) OVER w_desc AS rank_pos,
           sum(truth) OVER (PARTITION BY sample_id) AS n_pos,
           count(*) OVER (PARTITION BY sample_id) AS n_labels
    FROM _scored
    WINDOW w_desc AS (PARTITION BY sample_id ORDER BY score DESC RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
)
SELECT sample_id,
       CASE WHEN max(n_pos) = 0 OR max(n_pos) = max(n_labels) THEN 1.0
            ELSE avg(rank_pos / rank_all) FILTER (WHERE truth = 1) END AS lrap,
       coalesce(max(rank_all) FILTER (WHERE truth = 1), 0) AS coverage,
       CASE WHEN max(n_pos) = 0 OR max(n_pos) = max(n_labels) THEN 0.0
            ELSE sum(rank_all - rank_pos) FILTER (WHERE truth = 1) / (max(n_pos) * (max(n_labels) - max(n_pos)))
       END AS ranking_loss
FROM ranked
GROUP BY sample_id
ORDER BY sample_id;
