-- Dashboard views over video_scans in BigQuery's GoogleSQL: the same views, columns and
-- meaning as views.sql. Days are UTC days. Loaded by
-- schemas.warehouse.bigquery_view_statements(), which turns every backticked name into
-- `project.dataset.name`: backticks only around table and view names, and ';' only at
-- the end of a statement.

-- Videos per UTC day and status: how much was scanned and why some have no score.
CREATE OR REPLACE VIEW `daily_status_counts` AS
SELECT
    DATE(scanned_at, 'UTC') AS day,
    status,
    COUNT(*) AS videos
FROM `video_scans`
GROUP BY day, status;

-- Share of scored videos labelled FAKE, per UTC day and model version. Only status
-- 'scored' counts: a video with no face has no verdict and must not dilute the rate.
CREATE OR REPLACE VIEW `daily_fake_rate` AS
SELECT
    DATE(scanned_at, 'UTC') AS day,
    model_version,
    COUNT(*) AS scored,
    COUNTIF(label = 'FAKE') AS fake,
    COUNTIF(label = 'FAKE') / COUNT(*) AS fake_rate
FROM `video_scans`
WHERE status = 'scored'
GROUP BY day, model_version;

-- fake_probability in ten buckets of 0.1 (bucket 9 holds 0.9..1.0 inclusive), per
-- model version, every bucket present (0 when empty) so a chart keeps its x axis.
CREATE OR REPLACE VIEW `score_histogram` AS
WITH scored AS (
    SELECT
        model_version,
        GREATEST(LEAST(CAST(FLOOR(fake_probability * 10) AS INT64), 9), 0) AS bucket
    FROM `video_scans`
    WHERE fake_probability IS NOT NULL
),
models AS (
    SELECT DISTINCT model_version FROM scored
)
SELECT
    m.model_version,
    b AS bucket,
    COUNT(s.bucket) AS videos
FROM models AS m
CROSS JOIN UNNEST(GENERATE_ARRAY(0, 9)) AS b
LEFT JOIN scored AS s
    ON s.model_version = m.model_version AND s.bucket = b
GROUP BY m.model_version, b;
