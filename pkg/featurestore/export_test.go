package featurestore

import (
	"context"
	"time"
)

// SetUserChunk sets the document bytes per user UPDATE, so that tests with small documents
// still split a batch's users over several statements.
func (s *Store) SetUserChunk(bytes int) { s.userChunk = bytes }

// MetaLockKey is the advisory lock of feature_meta, for tests that hold it.
const MetaLockKey = metaLockKey

// UserKey is the Redis key of a user's hash.
func (s *Store) UserKey(id string) string { return s.keys.User(id) }

// AwaitRepopulation is Forget's wait for a running repopulation, with its bound.
func (s *Store) AwaitRepopulation(ctx context.Context, limit time.Duration) error {
	return s.awaitRepopulation(ctx, limit)
}
