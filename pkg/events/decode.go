package events

import (
	"bytes"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Limits are the API's admission limits. The zero value is not useful; start from
// DefaultLimits.
type Limits struct {
	MaxFutureMs  int64 // ts may be at most this far ahead of the server clock
	MaxAgeMs     int64 // ts may be at most this old
	MaxBatchSize int   // events per /log/batch request
	MaxItems     int   // items per impression
	// RandomMissingIDs gives an event sent without an event_id a fresh random id, as the
	// original service did (a resend is then stored again); by default the id is derived
	// from the event's content (ContentID).
	RandomMissingIDs bool
}

// The contract's defaults (CONTRACT_MAX_EVENT_FUTURE_MS, CONTRACT_MAX_EVENT_AGE_MS,
// CONTRACT_MAX_BATCH_SIZE and the impression item limit).
const (
	DefaultMaxFutureMs  = 300_000
	DefaultMaxAgeMs     = 2_592_000_000
	DefaultMaxBatchSize = 1000
	DefaultMaxItems     = 500
)

// DefaultLimits returns the contract's limits.
func DefaultLimits() Limits {
	return Limits{MaxFutureMs: DefaultMaxFutureMs, MaxAgeMs: DefaultMaxAgeMs, MaxBatchSize: DefaultMaxBatchSize, MaxItems: DefaultMaxItems}
}

// DecodeImpression decodes and validates the body of POST /log/impression. On success ts_ms
// is normalised to milliseconds, a missing event_id is filled in (see Limits.RandomMissingIDs)
// and server_received_ts_ms is set to now.
func DecodeImpression(body []byte, lim Limits, now time.Time) (*Impression, *ValidationError) {
	return decodeOne(body, lim, now, (*checker).decImpression)
}

// DecodeWatch decodes and validates the body of POST /log/watch, like DecodeImpression.
func DecodeWatch(body []byte, lim Limits, now time.Time) (*Watch, *ValidationError) {
	return decodeOne(body, lim, now, (*checker).decWatch)
}

// DecodeLegacy decodes and validates the body of POST /event. ts keeps the client's value
// (seconds or milliseconds), as the contract says; the window check uses its normalised value.
func DecodeLegacy(body []byte, lim Limits, now time.Time) (*Legacy, *ValidationError) {
	c, root := start(body, lim, now)
	defer c.release()
	if root == nil {
		return nil, c.result()
	}
	e := c.decLegacy(root)
	if err := c.result(); err != nil {
		return nil, err
	}
	e.ServerReceivedTsMs = c.nowMs
	c.fillID(e)
	return e, nil
}

// decodeOne decodes and validates one event's body with dec and finishes it (milliseconds,
// server receive time).
func decodeOne[E interface {
	finish(nowMs int64)
	ContentID() string
	idField() *string
}](body []byte, lim Limits, now time.Time, dec func(*checker, *node) E) (E, *ValidationError) {
	var none E
	c, root := start(body, lim, now)
	defer c.release()
	if root == nil {
		return none, c.result()
	}
	e := dec(c, root)
	if err := c.result(); err != nil {
		return none, err
	}
	e.finish(c.nowMs)
	c.fillID(e)
	return e, nil
}

// DecodeBatch decodes and validates the body of POST /log/batch: {"events": [...]} with
// impressions and watches mixed. An element is an impression when its event_type says so or,
// without event_type, when it has "items"; otherwise it is a watch. Errors are located at
// ["body", "events", i, field...].
func DecodeBatch(body []byte, lim Limits, now time.Time) ([]Any, *ValidationError) {
	c, root := start(body, lim, now)
	defer c.release()
	if root == nil {
		return nil, c.result()
	}
	var list *node
	c.fields(root, func(k string, v *node) bool {
		if k != "events" {
			return false
		}
		list = v
		return true
	})
	if list == nil {
		c.bad("events", "missing", "Field required", c.rawInput(root), nil)
		return nil, c.result()
	}
	if list.kind != jArray {
		c.bad("events", "list_type", "Input should be a valid list", c.rawInput(list), nil)
		return nil, c.result()
	}
	elems := c.mem.kids(list)
	switch n := len(elems); {
	case n == 0:
		c.add(c.at("events"), "too_short", "List should have at least 1 item after validation, not 0", []any{},
			map[string]any{"field_type": "List", "min_length": 1, "actual_length": 0})
		return nil, c.result()
	case n > lim.MaxBatchSize:
		c.add(c.at("events"), "too_long", "List should have at most "+strconv.Itoa(lim.MaxBatchSize)+" item"+plural(lim.MaxBatchSize)+" after validation, not "+strconv.Itoa(n),
			nil, map[string]any{"field_type": "List", "max_length": lim.MaxBatchSize, "actual_length": n})
		return nil, c.result()
	}
	out := make([]Any, 0, len(elems))
	ids := c.mem.batchIDs()
	c.planBatch(list)
	dup := false
	c.push("events")
	for i := range elems {
		el := &elems[i]
		if el.kind != jObject {
			c.bad(i, "model_type", "Input should be a valid dictionary or instance of ImpressionEvent or WatchEvent", c.rawInput(el),
				map[string]any{"class_name": "ImpressionEvent | WatchEvent"})
			continue
		}
		c.push(i)
		var ev Any
		var id string
		switch c.mem.kinds[i] {
		case KindImpression:
			e := c.decImpression(el)
			ev, id = e, e.EventID
		case KindWatch:
			e := c.decWatch(el)
			ev, id = e, e.EventID
		default:
			c.add(c.at("event_type"), "literal_error", "Input should be 'impression' or 'watch'", c.rawInput(c.mem.get(el, "event_type")),
				map[string]any{"expected": "'impression' or 'watch'"})
		}
		if ev != nil && id != "" && c.ok("event_id") {
			if _, seen := ids[id]; seen {
				dup = true
			}
			ids[id] = struct{}{}
		}
		c.pop()
		out = append(out, ev)
	}
	c.pop()
	if dup {
		c.valueError("events", nil, "batch events must have unique event_id")
	}
	if err := c.result(); err != nil {
		return nil, err
	}
	for _, ev := range out {
		switch e := ev.(type) {
		case *Impression:
			e.finish(c.nowMs)
			c.fillID(e)
		case *Watch:
			e.finish(c.nowMs)
			c.fillID(e)
		}
	}
	return out, nil
}

// kindOf picks the union member of a batch element; "" means an unknown event_type.
// contexts counts the element's "context" keys holding an object (each is decoded).
func (m *parseMem) kindOf(obj *node) (kind Kind, contexts int) {
	var typ *node
	hasItems := false
	kids := m.kids(obj)
	for i := range kids {
		switch m.key(&kids[i]) {
		case "event_type":
			typ = &kids[i] // the last one wins, as on lookup
		case "items":
			hasItems = true
		case "context":
			if kids[i].kind == jObject {
				contexts++
			}
		}
	}
	switch {
	case typ != nil:
		if typ.kind == jString {
			switch Kind(m.str(typ)) {
			case KindImpression:
				return KindImpression, contexts
			case KindWatch:
				return KindWatch, contexts
			}
		}
		return "", contexts
	case hasItems:
		return KindImpression, contexts
	}
	return KindWatch, contexts
}

// planBatch records the kind of every element of a batch (c.mem.kinds) and allocates the
// batch's events and contexts in one slice per type: a 500-watch batch then costs three
// allocations instead of a thousand, which the collector would have to track one by one.
// The events of a request live and die together (the writer holds them until the commit),
// so sharing the backing arrays keeps nothing alive longer than it was.
func (c *checker) planBatch(list *node) {
	m := c.mem
	elems := m.kids(list)
	m.kinds = slices.Grow(m.kinds[:0], len(elems))[:len(elems)]
	var watches, impressions, contexts int
	for i := range elems {
		el := &elems[i]
		m.kinds[i] = ""
		if el.kind != jObject {
			continue
		}
		k, n := m.kindOf(el)
		m.kinds[i] = k
		switch k {
		case KindWatch:
			watches++
		case KindImpression:
			impressions++
		default:
			continue
		}
		contexts += n
	}
	if watches > 0 {
		c.watches = make([]watchAlloc, watches)
	}
	if impressions > 0 {
		c.impressions = make([]Impression, impressions)
	}
	if contexts > 0 {
		c.contexts = make([]contextAlloc, contexts)
	}
}

// get returns the value of key in an object (the last one when repeated), or nil.
func (m *parseMem) get(n *node, key string) *node {
	kids := m.kids(n)
	for i := len(kids) - 1; i >= 0; i-- {
		if m.key(&kids[i]) == key {
			return &kids[i]
		}
	}
	return nil
}

// fillID gives an event sent without an event_id its id, once the event is valid (an
// explicit "" or null is an error, so an empty id here was absent): derived from the event's
// content (ContentID, so a resend is a duplicate), or with Limits.RandomMissingIDs a fresh
// random one, as the original service did.
func (c *checker) fillID(ev interface {
	ContentID() string
	idField() *string
}) {
	id := ev.idField()
	if *id != "" {
		return
	}
	if c.lim.RandomMissingIDs {
		*id = NewEventID()
	} else {
		*id = ev.ContentID()
	}
}

func (e *Common) finish(nowMs int64) {
	e.TsMs = NormalizeTs(e.TsMs)
	e.ServerReceivedTsMs = nowMs
}

// utf8BOM is the byte order mark some clients (Windows tools, .NET's UTF8Encoding) put before
// a body. The original service parsed bodies with json.loads on bytes, which skips it.
var utf8BOM = []byte{0xEF, 0xBB, 0xBF}

func start(body []byte, lim Limits, now time.Time) (*checker, *node) {
	body = bytes.TrimPrefix(body, utf8BOM)
	// The detail echoes at most about the body's size: what the client sent, once.
	c := &checker{window: true, lim: lim, nowMs: now.UnixMilli(), loc: make([]any, 1, 8), echoMax: max(len(body), minEchoBudget)}
	c.loc[0] = "body"
	empty := true
	for _, b := range body {
		if b != ' ' && b != '\t' && b != '\n' && b != '\r' {
			empty = false
			break
		}
	}
	if empty {
		c.add([]any{"body"}, "missing", "Field required", nil, nil)
		return c, nil
	}
	c.mem = parseMems.Get().(*parseMem)
	root, err := parseJSON(string(body), c.mem)
	if err != nil {
		c.add([]any{"body", err.pos}, "json_invalid", "JSON decode error", map[string]any{}, map[string]any{"error": err.msg})
		return c, nil
	}
	if root.kind != jObject {
		c.add([]any{"body"}, "model_attributes_type", "Input should be a valid dictionary or object to extract fields from", c.rawInput(&root), nil)
		return c, nil
	}
	return c, &root
}

// release returns the parse memory of the request's tree; nothing may use the tree after.
func (c *checker) release() {
	if c.mem != nil {
		c.mem.release()
		c.mem = nil
	}
}

func (c *checker) result() *ValidationError {
	if len(c.errs) == 0 {
		return nil
	}
	return &ValidationError{Errors: c.errs}
}

// fields calls fn for each key of obj; keys fn does not know are extra_forbidden errors.
func (c *checker) fields(obj *node, fn func(k string, v *node) bool) {
	kids := c.mem.kids(obj)
	for i := range kids {
		if k := c.mem.key(&kids[i]); !fn(k, &kids[i]) {
			c.add(c.at(k), "extra_forbidden", "Extra inputs are not permitted", c.rawInput(&kids[i]), nil)
		}
	}
}

func (c *checker) require(obj *node, present bool, key string) {
	if !present {
		c.bad(key, "missing", "Field required", c.rawInput(obj), nil)
	}
}

func (c *checker) decString(k string, v *node, dst *string) bool {
	if v.kind != jString {
		c.bad(k, "string_type", "Input should be a valid string", c.rawInput(v), nil)
		return false
	}
	*dst = c.mem.str(v)
	return true
}

// decOptString decodes a nullable string into *slot and points *dst at it; a nil slot is
// allocated. The decoders pass slots inside the event's own allocation (watchAlloc,
// contextAlloc): one allocation per event instead of one per optional field.
func (c *checker) decOptString(k string, v *node, dst **string, slot *string) {
	if v.kind == jNull {
		*dst = nil
		return
	}
	if slot == nil {
		slot = new(string)
	}
	if c.decString(k, v, slot) {
		*dst = slot
	}
}

// parseInt accepts JSON integers and integral floats such as 3.0 (pydantic's lax rule);
// it returns the pydantic error type otherwise.
func parseInt(tok string) (int64, string) {
	if i, err := strconv.ParseInt(tok, 10, 64); err == nil {
		return i, ""
	}
	f, err := strconv.ParseFloat(tok, 64)
	if err != nil && math.IsInf(f, 0) {
		return 0, "int_parsing_size"
	}
	if f != math.Trunc(f) {
		return 0, "int_from_float"
	}
	if f < math.MinInt64 || f >= math.MaxInt64 {
		return 0, "int_parsing_size"
	}
	return int64(f), ""
}

var intMsgs = map[string]string{
	"int_type":         "Input should be a valid integer",
	"int_from_float":   "Input should be a valid integer, got a number with a fractional part",
	"int_parsing":      LaxMessage("int_parsing"),
	"int_parsing_size": LaxMessage("int_parsing_size"),
}

// decInt takes a JSON integer, an integral number, a numeric string or a boolean (pydantic's
// lax integer).
func (c *checker) decInt(k string, v *node, dst *int64) bool {
	typ := "int_type"
	var i int64
	switch v.kind {
	case jNumber:
		i, typ = parseInt(c.mem.str(v))
	case jString:
		i, typ = LaxInt(c.mem.str(v))
	case jBool:
		i, typ = b2i(v.b), ""
	}
	if typ == "" {
		*dst = i
		return true
	}
	c.bad(k, typ, intMsgs[typ], c.rawInput(v), nil)
	return false
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// decOptInt is decOptString for integers.
func (c *checker) decOptInt(k string, v *node, dst **int64, slot *int64) {
	if v.kind == jNull {
		*dst = nil
		return
	}
	if slot == nil {
		slot = new(int64)
	}
	if c.decInt(k, v, slot) {
		*dst = slot
	}
}

// decFloat takes a JSON number, a numeric string or a boolean (pydantic's lax number), finite.
func (c *checker) decFloat(k string, v *node, dst *float64) bool {
	var f float64
	switch v.kind {
	case jNumber:
		f, _ = strconv.ParseFloat(c.mem.str(v), 64)
	case jString:
		var typ string
		if f, typ = LaxFloat(c.mem.str(v)); typ != "" {
			c.bad(k, typ, LaxMessage(typ), c.rawInput(v), nil)
			return false
		}
	case jBool:
		f = float64(b2i(v.b))
	default:
		c.bad(k, "float_type", "Input should be a valid number", c.rawInput(v), nil)
		return false
	}
	if math.IsInf(f, 0) || math.IsNaN(f) {
		// JSON cannot carry infinity back out, so the event could never be encoded.
		c.bad(k, "finite_number", "Input should be a finite number", c.rawInput(v), nil)
		return false
	}
	*dst = f
	return true
}

// decOptFloat is decOptString for numbers.
func (c *checker) decOptFloat(k string, v *node, dst **float64, slot *float64) {
	if v.kind == jNull {
		*dst = nil
		return
	}
	if slot == nil {
		slot = new(float64)
	}
	if c.decFloat(k, v, slot) {
		*dst = slot
	}
}

// decOptBool is decOptString for booleans: true/false, 0/1, or pydantic's boolean words.
func (c *checker) decOptBool(k string, v *node, dst **bool, slot *bool) {
	var b, ok bool
	typ := "bool_parsing"
	switch v.kind {
	case jNull:
		*dst = nil
		return
	case jBool:
		b, ok = v.b, true
	case jNumber:
		// As pydantic-core's JSON lax_bool: an integer (an i64) or an integral float is
		// bool_parsing unless 0 or 1; a fractional, non-finite or out-of-i64 number is not
		// a boolean's input at all (bool_type).
		lit := c.mem.str(v)
		if strings.ContainsAny(lit, ".eE") {
			f, err := strconv.ParseFloat(lit, 64)
			if err != nil || f != math.Trunc(f) || f < math.MinInt64 || f >= math.MaxInt64 {
				typ = "bool_type"
				break
			}
			b, ok = f == 1, f == 0 || f == 1
		} else if i, err := strconv.ParseInt(lit, 10, 64); err != nil {
			typ = "bool_type"
		} else {
			b, ok = i == 1, i == 0 || i == 1
		}
	case jString:
		b, ok = LaxBool(c.mem.str(v))
	default:
		typ = "bool_type"
	}
	if !ok {
		msg := "Input should be a valid boolean"
		if typ == "bool_parsing" {
			msg = LaxMessage(typ)
		}
		c.bad(k, typ, msg, c.rawInput(v), nil)
		return
	}
	if slot == nil {
		slot = new(bool)
	}
	*slot = b
	*dst = slot
}

// decLiteral reads a literal-typed field; a non-string is a literal_error like pydantic's.
func (c *checker) decLiteral(k string, v *node, dst *string, allowed ...string) {
	if v.kind != jString {
		c.bad(k, "literal_error", "Input should be "+expected(allowed), c.rawInput(v), map[string]any{"expected": expected(allowed)})
		return
	}
	*dst = c.mem.str(v)
}

func (c *checker) decModel(k any, v *node, class string) bool {
	if v.kind != jObject {
		c.bad(k, "model_type", "Input should be a valid dictionary or instance of "+class, c.rawInput(v), map[string]any{"class_name": class})
		return false
	}
	return true
}

func (c *checker) decContext(k string, v *node, dst **Context) {
	if v.kind == jNull {
		*dst = nil
		return
	}
	if v.kind != jObject {
		// Only here: k passed as decModel's any is boxed, an allocation per event.
		c.decModel(k, v, "Context")
		return
	}
	a := takeSlot(&c.contexts)
	ctx := &a.ctx
	used := 0 // slots of a.values taken
	if k == "context" {
		c.push("context") // a constant boxes without allocating; push(k) allocated per event
	} else {
		c.push(k)
	}
	c.fields(v, func(f string, fv *node) bool {
		var p **string
		switch f {
		case "device":
			p = &ctx.Device
		case "platform":
			p = &ctx.Platform
		case "app_version":
			p = &ctx.AppVersion
		case "locale":
			p = &ctx.Locale
		case "country":
			p = &ctx.Country
		case "timezone":
			p = &ctx.Timezone
		case "referrer":
			p = &ctx.Referrer
		case "user_agent":
			p = &ctx.UserAgent
		default:
			return false
		}
		var slot *string // nil: allocated by decOptString
		if used < len(a.values) {
			slot = &a.values[used]
			used++
		}
		c.decOptString(f, fv, p, slot)
		return true
	})
	c.pop()
	*dst = ctx
}

// Presence bits of the common fields.
const (
	hasUser = 1 << iota
	hasSession
	hasRequest
	hasTs
)

func (c *checker) decCommon(e *Common, k string, v *node, seen *int) bool {
	switch k {
	case "event_id":
		c.decString(k, v, &e.EventID)
	case "user_id":
		c.decString(k, v, &e.UserID)
		*seen |= hasUser
	case "session_id":
		c.decString(k, v, &e.SessionID)
		*seen |= hasSession
	case "request_id":
		c.decString(k, v, &e.RequestID)
		*seen |= hasRequest
	case "ts_ms":
		c.decInt(k, v, &e.TsMs)
		*seen |= hasTs
	case "server_received_ts_ms":
		// Optional and always overwritten, but a client value must still be valid.
		var i *int64
		c.decOptInt(k, v, &i, nil)
		if i != nil && *i <= 0 {
			c.bad(k, "greater_than", "Input should be greater than 0", c.rawInput(v), map[string]any{"gt": 0})
		}
	case "context":
		c.decContext(k, v, &e.Context)
	default:
		return false
	}
	return true
}

func (c *checker) requireCommon(obj *node, seen int) {
	c.require(obj, seen&hasUser != 0, "user_id")
	c.require(obj, seen&hasSession != 0, "session_id")
	c.require(obj, seen&hasRequest != 0, "request_id")
	c.require(obj, seen&hasTs != 0, "ts_ms")
}

func (c *checker) decImpression(obj *node) *Impression {
	e := takeSlot(&c.impressions)
	e.EventType = string(KindImpression)
	seen, hasItems := 0, false
	c.fields(obj, func(k string, v *node) bool {
		switch k {
		case "event_type":
			c.decLiteral(k, v, &e.EventType, string(KindImpression))
		case "items":
			hasItems = true
			e.Items = c.decItems(k, v)
		default:
			return c.decCommon(&e.Common, k, v, &seen)
		}
		return true
	})
	c.requireCommon(obj, seen)
	c.require(obj, hasItems, "items")
	c.noID = c.mem.get(obj, "event_id") == nil
	c.impression(e, c.lim.MaxItems)
	c.noID = false
	return e
}

func (c *checker) decItems(k string, v *node) []ImpressionItem {
	if v.kind != jArray {
		c.bad(k, "list_type", "Input should be a valid list", c.rawInput(v), nil)
		return nil
	}
	elems := c.mem.kids(v)
	items := make([]ImpressionItem, len(elems))
	if c.lim.MaxItems > 0 && len(items) > c.lim.MaxItems {
		return items // too_long is reported by the rules; the elements are not worth decoding
	}
	c.push(k)
	for i := range elems {
		el := &elems[i]
		if !c.decModel(i, el, "ImpressionItem") {
			continue
		}
		it := &items[i]
		hasID, hasPos := false, false
		c.push(i)
		c.fields(el, func(f string, fv *node) bool {
			switch f {
			case "item_id":
				hasID = true
				c.decString(f, fv, &it.ItemID)
			case "position":
				hasPos = true
				c.decInt(f, fv, &it.Position)
			case "feed_id":
				c.decOptString(f, fv, &it.FeedID, nil)
			case "slot":
				c.decOptString(f, fv, &it.Slot, nil)
			default:
				return false
			}
			return true
		})
		c.require(el, hasID, "item_id")
		c.require(el, hasPos, "position")
		c.pop()
	}
	c.pop()
	return items
}

// watchAlloc is a decoded watch with the values its optional fields point to, allocated
// together (a repeated key reuses its slot: the last value wins, as on lookup).
type watchAlloc struct {
	w              Watch
	percent, speed float64
	rebuffers      int64
	ended          bool
}

// contextAlloc is a decoded context with the values of its first fields, allocated
// together (room for all eight would more than double the allocation of a usual context).
// takeSlot hands out the next element of a batch's preallocated slice (DecodeBatch sizes it
// per kind), or a new one when the count ran short.
func takeSlot[T any](pool *[]T) *T {
	if len(*pool) == 0 {
		return new(T)
	}
	p := &(*pool)[0]
	*pool = (*pool)[1:]
	return p
}

type contextAlloc struct {
	ctx    Context
	values [3]string
}

func (c *checker) decWatch(obj *node) *Watch {
	a := takeSlot(&c.watches)
	e := &a.w
	e.EventType = string(KindWatch)
	seen, hasItem, hasTime := 0, false, false
	c.fields(obj, func(k string, v *node) bool {
		switch k {
		case "event_type":
			c.decLiteral(k, v, &e.EventType, string(KindWatch))
		case "item_id":
			hasItem = true
			c.decString(k, v, &e.ItemID)
		case "watch_time_sec":
			hasTime = true
			c.decFloat(k, v, &e.WatchTimeSec)
		case "percent_watched":
			c.decOptFloat(k, v, &e.PercentWatched, &a.percent)
		case "ended":
			c.decOptBool(k, v, &e.Ended, &a.ended)
		case "playback_speed":
			c.decOptFloat(k, v, &e.PlaybackSpeed, &a.speed)
		case "rebuffer_count":
			c.decOptInt(k, v, &e.RebufferCount, &a.rebuffers)
		default:
			return c.decCommon(&e.Common, k, v, &seen)
		}
		return true
	})
	c.requireCommon(obj, seen)
	c.require(obj, hasItem, "item_id")
	c.require(obj, hasTime, "watch_time_sec")
	c.noID = c.mem.get(obj, "event_id") == nil
	c.watch(e)
	c.noID = false
	return e
}

func (c *checker) decLegacy(obj *node) *Legacy {
	e := &Legacy{}
	var hasUser, hasItem, hasType, hasTs bool
	c.fields(obj, func(k string, v *node) bool {
		switch k {
		case "event_id":
			c.decString(k, v, &e.EventID)
		case "user_id":
			hasUser = true
			c.decString(k, v, &e.UserID)
		case "item_id":
			hasItem = true
			c.decString(k, v, &e.ItemID)
		case "event_type":
			hasType = true
			c.decLiteral(k, v, &e.EventType, LegacyView, LegacyClick, LegacyPurchase)
		case "ts":
			hasTs = true
			c.decInt(k, v, &e.Ts)
		default:
			return false
		}
		return true
	})
	c.require(obj, hasUser, "user_id")
	c.require(obj, hasItem, "item_id")
	c.require(obj, hasType, "event_type")
	c.require(obj, hasTs, "ts")
	c.noID = c.mem.get(obj, "event_id") == nil
	c.legacy(e)
	c.noID = false
	return e
}
