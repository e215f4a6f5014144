package history

import (
	"strings"
	"testing"
	"time"
)

// ttlBound is the clock bound of the TTL tests: 50 ms.
const ttlBound = 50 * time.Millisecond

// ms converts milliseconds to recorder time.
func ms(n int64) int64 { return n * int64(time.Millisecond) }

// tSet is an acknowledged set of k [call, ret] (ms) with a TTL in ms (0:
// none) and the deadline it was answered with (ms; 0: none).
func tSet(c int, v string, call, ret, ttl, deadline int64) Op {
	return Op{Client: c, Kind: Write, Key: "k", Value: v, Call: ms(call), Return: ms(ret), Outcome: OK,
		TTL: time.Duration(ms(ttl)), Deadline: ms(deadline)}
}

// tGet is a read of k that found v with the given deadline (ms; 0: none).
func tGet(c int, v string, call, ret, deadline int64) Op {
	return Op{Client: c, Kind: Read, Key: "k", Value: v, Found: true, Call: ms(call), Return: ms(ret), Outcome: OK, Deadline: ms(deadline)}
}

func tAbsent(c int, call, ret int64) Op {
	return Op{Client: c, Kind: Read, Key: "k", Call: ms(call), Return: ms(ret), Outcome: OK}
}

func stale(o Op) Op {
	o.Stale = true
	return o
}

func TestCheckTTL(t *testing.T) {
	tests := []struct {
		name string
		ops  []Op
		// want is a piece of the one problem expected ("": none).
		want string
		// live and expired are the reads that had to see the set, and
		// that had to find it gone (checked only when want is "").
		live, expired int
	}{
		// The set took effect at 5 with a TTL of 1 s: deadline 1005.
		{"read before, near and after the deadline", []Op{
			tSet(0, "v", 0, 10, 1000, 1005),
			tGet(1, "v", 100, 110, 1005), tGet(1, "v", 940, 950, 1005),
			tAbsent(1, 990, 1000), // within the bound of the deadline: either
			tGet(1, "v", 1020, 1030, 1005),
			tAbsent(1, 1100, 1110),
		}, "", 2, 1},
		{"stale reads may miss a live key", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), stale(tAbsent(1, 100, 110)),
		}, "", 0, 0},
		{"set again before the deadline", []Op{
			tSet(0, "v1", 0, 10, 1000, 1005), tSet(0, "v2", 500, 510, 1000, 1505),
			tGet(1, "v2", 1200, 1210, 1505), tAbsent(1, 1600, 1610),
		}, "", 1, 1},
		{"a delete explains the key's absence", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), {Client: 0, Kind: Delete, Key: "k", Call: ms(100), Return: ms(110), Outcome: OK, Found: true},
			tAbsent(1, 200, 210),
		}, "", 0, 0},
		{"a pending set may show up, with its own deadline, and run out", []Op{
			tSet(0, "v1", 0, 10, 4000, 4005), pending(tSet(1, "v2", 100, 110, 1000, 0)),
			tGet(2, "v2", 300, 310, 1200), tAbsent(2, 1500, 1510),
		}, "", 1, 0},
		{"no TTL: the value stays", []Op{
			tSet(0, "v", 0, 10, 0, 0), tGet(1, "v", 5000, 5010, 0),
		}, "", 1, 0},
		{"failed writes and failed conditions change nothing", []Op{
			tSet(0, "v", 0, 10, 1000, 1005),
			{Client: 1, Kind: Write, Key: "k", Value: "x", Call: ms(20), Return: ms(30), Outcome: Failed, TTL: time.Second},
			{Client: 1, Kind: Write, Key: "k", Value: "y", Call: ms(40), Return: ms(50), Outcome: OK, CondFailed: true, Found: true, HasIfRevision: true},
			tGet(2, "v", 100, 110, 1005),
		}, "", 1, 0},

		// Violations.
		{"read after the deadline", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), tGet(1, "v", 1100, 1110, 1005),
		}, "after its deadline", 0, 0},
		{"stale read after the deadline", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), stale(tGet(1, "v", 1100, 1110, 1005)),
		}, "after its deadline", 0, 0},
		{"read after the deadline it reported itself", []Op{
			pending(tSet(0, "v", 0, 10, 1000, 0)), stale(tGet(1, "v", 1100, 1110, 1005)),
		}, "after its deadline", 0, 0},
		{"deadline moved", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), tGet(1, "v", 500, 510, 3000),
		}, "another deadline", 0, 0},
		{"TTL lost", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), tGet(1, "v", 100, 110, 0),
		}, "TTL lost", 0, 0},
		{"TTL lost by a pending set", []Op{
			pending(tSet(0, "v", 0, 10, 1000, 0)), stale(tGet(1, "v", 100, 110, 0)),
		}, "TTL lost", 0, 0},
		{"a pending set's deadline before its TTL could run out", []Op{
			pending(tSet(0, "v", 100, 110, 1000, 0)), stale(tGet(1, "v", 200, 210, 900)),
		}, "before the set's call plus its TTL", 0, 0},
		{"acknowledged without a deadline", []Op{tSet(0, "v", 0, 10, 1000, 0)}, "without a deadline", 0, 0},
		{"deadline not computed from the TTL", []Op{tSet(0, "v", 0, 10, 1000, 2000)}, "not its TTL after", 0, 0},
		{"missing before the deadline", []Op{
			tSet(0, "v", 0, 10, 1000, 1005), tAbsent(1, 100, 110),
		}, "found the key absent", 0, 0},
		{"an older value after the new one ran out", []Op{
			tSet(0, "v0", 0, 10, 0, 0), tSet(0, "v1", 20, 30, 1000, 1025), tGet(1, "v0", 1200, 1210, 0),
		}, `returned "v0"`, 0, 0},
		// v2, had it taken effect after v1, would have lasted until
		// 2100 at least: it cannot explain the absence at 510.
		{"a pending set's TTL cannot run out that early", []Op{
			tSet(0, "v1", 0, 10, 4000, 4005), pending(tSet(1, "v2", 100, 110, 2000, 0)), tAbsent(2, 500, 510),
		}, "found the key absent", 0, 0},
		// v0's answer was lost long before v1; to hide v1 it must take
		// effect after it, so it would last until 3000 at least.
		{"an old pending set cannot run out as soon as it takes effect", []Op{
			pending(tSet(1, "v0", 0, 10, 1000, 0)), tSet(0, "v1", 2000, 2010, 4000, 6005), tAbsent(2, 2500, 2510),
		}, "found the key absent", 0, 0},
		{"a value nobody set", []Op{tGet(1, "ghost", 0, 10, 0)}, "no set wrote", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rep := CheckTTL(hist(tt.ops...), ttlBound)
			if tt.want == "" {
				if !rep.OK() {
					t.Fatalf("valid history rejected: %q", rep.Problems)
				}
				if rep.Live != tt.live || rep.Expired != tt.expired {
					t.Errorf("live %d, expired %d reads; want %d, %d", rep.Live, rep.Expired, tt.live, tt.expired)
				}
				return
			}
			if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], tt.want) {
				t.Fatalf("problems %q, want one with %q", rep.Problems, tt.want)
			}
		})
	}
}

// Deadlines come as wall-clock times; Wall puts them on the recorder's
// clock.
func TestRecorderWall(t *testing.T) {
	r := NewRecorder()
	time.Sleep(10 * time.Millisecond)
	now := r.Now()
	// As the server renders expires_at: whole milliseconds, no monotonic
	// reading.
	at, err := time.Parse(time.RFC3339Nano, time.Now().Add(2*time.Second).UTC().Format("2006-01-02T15:04:05.000Z07:00"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.Wall(at), now+int64(2*time.Second); got < want-ms(5) || got > want+ms(5) {
		t.Fatalf("Wall: %s, want about %s", time.Duration(got), time.Duration(want))
	}
}

func TestCountsConditionFailures(t *testing.T) {
	h := hist(rCas(0, "1", 0, 0, 10, 3), rCasFailed(1, "1", 0, 0, 10, 3, true), pending(rCas(2, "2", 3, 20, 30, 0)))
	if s, want := h.Counts(), "write: 2 ok, 0 failed, 1 unknown (1 of the ok a failed condition)"; s != want {
		t.Fatalf("counts %q, want %q", s, want)
	}
}
