package featurestore

// SetUserChunk sets the document bytes per user UPDATE, so that tests with small documents
// still split a batch's users over several statements.
func (s *Store) SetUserChunk(bytes int) { s.userChunk = bytes }

// MetaLockKey is the advisory lock of feature_meta, for tests that hold it.
const MetaLockKey = metaLockKey
