DROP TABLE IF EXISTS feature_redis_pending;
DROP TABLE IF EXISTS feature_dlq;
DROP TABLE IF EXISTS feature_applied;
DROP TABLE IF EXISTS feature_covis;
DROP TABLE IF EXISTS feature_items;
DROP TABLE IF EXISTS feature_users;
DROP TABLE IF EXISTS feature_meta;
