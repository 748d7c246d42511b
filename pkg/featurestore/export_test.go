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

// SetWriting calls f with the users of each Redis write, after its values were read and
// before it is sent.
func (s *Store) SetWriting(f func(users []string)) { s.writing = f }

// AwaitRepopulation is Forget's wait for a running repopulation, with its bound.
func (s *Store) AwaitRepopulation(ctx context.Context, limit time.Duration) error {
	return s.awaitRepopulation(ctx, limit)
}

// Len is how many erased users f holds.
func (f *Forgotten) Len() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return len(f.m)
}

// LastRead is how many rows f's last refresh read.
func (f *Forgotten) LastRead() int {
	f.refreshing.Lock()
	defer f.refreshing.Unlock()
	return f.read
}

// SetXmin sets the transaction id f's next refresh reads from, as if its last read had been
// on a cluster that had gone further.
func (f *Forgotten) SetXmin(xmin uint64) {
	f.refreshing.Lock()
	defer f.refreshing.Unlock()
	f.xmin = xmin
}

// SetTrimHooks installs the TrimItems and TrimUsers test hooks (see trimHooks); nil leaves a step alone.
func (s *Store) SetTrimHooks(locked, trimmed, deleted func(ids []string)) {
	s.trimHooks = trimHooks{locked: locked, trimmed: trimmed, deleted: deleted}
}

// SetTrimRefillInlineRows sets the largest estimate of feature_items whose global lists a
// trim refills in the pass that took their members (below -1: never, as on a large catalog).
func (s *Store) SetTrimRefillInlineRows(n float64) { s.refillInlineRows = n }

// SetTrimScanned installs the hook TrimItems and TrimUsers call with its candidates, before it locks them.
func (s *Store) SetTrimScanned(f func(ids []string)) { s.trimHooks.scanned = f }

// SetServerStarted sets the server start time f's last read saw, as if it had been another
// server's (a failover's old primary).
func (f *Forgotten) SetServerStarted(t time.Time) {
	f.refreshing.Lock()
	defer f.refreshing.Unlock()
	f.started = t
}

// ResyncStaleOwingLists runs a same-generation repopulation's resync of the keys PostgreSQL
// no longer backs (resyncStale) under a repopulation lock it takes, with the global lists'
// refill owed, as trims on a catalog too large to refill inline leave it.
func (s *Store) ResyncStaleOwingLists(ctx context.Context) error {
	lk, err := s.takeLock(ctx)
	if err != nil {
		return err
	}
	defer lk.release(ctx)
	s.mu.Lock()
	s.listsOwed = [3]bool{true, true, true}
	s.mu.Unlock()
	return s.resyncStale(ctx, lk)
}

// RepopulationLockTTL is how long a repopulation lock lasts without a renewal.
const RepopulationLockTTL = lockTTL
