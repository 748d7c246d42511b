package migrations_test

import "testing"

// TestUserRetentionMigration: 0028 makes every existing user active at the upgrade (see
// testRetentionMigration).
func TestUserRetentionMigration(t *testing.T) {
	testRetentionMigration(t, 28, "feature_users", "user_id", "user", `INSERT INTO feature_users (user_id) VALUES ($1)`)
}
