package kvapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/clusterkit/clusterkit/engine"
	"github.com/clusterkit/clusterkit/errcode"
	"github.com/clusterkit/clusterkit/internal/apitest"
)

// step is one request of a scripted exchange with a node and what its
// answer must be. check, when set, looks at the decoded body; vars holds
// numbers earlier steps saved (revisions), by name.
type step struct {
	name       string
	method     string
	path       string
	body       string
	wantStatus int
	wantCode   string
	check      func(body map[string]any, vars map[string]float64) error
}

func runSteps(t *testing.T, steps []step) {
	t.Helper()
	n, c := singleNode(t, 16)
	vars := map[string]float64{}
	for _, s := range steps {
		var body []byte
		if s.body != "" {
			body = []byte(s.body)
		}
		r := doReq(t, c, s.method, n.url+s.path, body)
		if s.wantCode != "" {
			apitest.CheckError(t, r, s.wantStatus, s.wantCode)
		} else if r.Status != s.wantStatus {
			t.Fatalf("%s: %s %s = %d %s, want %d", s.name, s.method, s.path, r.Status, r.Body, s.wantStatus)
		}
		if s.check != nil {
			if err := s.check(r.Object(t), vars); err != nil {
				t.Fatalf("%s: %s %s answered %s: %v", s.name, s.method, s.path, r.Body, err)
			}
		}
	}
}

// field checks body[name] == want (numbers compare as float64).
func field(body map[string]any, name string, want any) error {
	got, ok := body[name]
	if !ok {
		return fmt.Errorf("no %q", name)
	}
	if w, isInt := want.(int); isInt {
		want = float64(w)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Errorf("%s = %v, want %v", name, got, want)
	}
	return nil
}

func all(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// save records body["revision"] as vars[name] and checks it is greater
// than vars[after] (when after is set).
func save(name, after string) func(map[string]any, map[string]float64) error {
	return func(b map[string]any, v map[string]float64) error {
		rev, ok := b["revision"].(float64)
		if !ok || rev <= 0 {
			return fmt.Errorf("revision = %v, want a positive number", b["revision"])
		}
		if after != "" && rev <= v[after] {
			return fmt.Errorf("revision %v is not after %s = %v", rev, after, v[after])
		}
		v[name] = rev
		return nil
	}
}

func TestConditionalWrites(t *testing.T) {
	t.Parallel()
	set := func(name, body string, status int, code string, check func(map[string]any, map[string]float64) error) step {
		return step{name: name, method: http.MethodPost, path: "/kv/set", body: body, wantStatus: status, wantCode: code, check: check}
	}
	post := func(name, path string, status int, code string, check func(map[string]any, map[string]float64) error) step {
		return step{name: name, method: http.MethodPost, path: path, wantStatus: status, wantCode: code, check: check}
	}
	get := func(name, path string, status int, code string, check func(map[string]any, map[string]float64) error) step {
		return step{name: name, method: http.MethodGet, path: path, wantStatus: status, wantCode: code, check: check}
	}
	conflict := func(rev string, exists bool) func(map[string]any, map[string]float64) error {
		return func(b map[string]any, v map[string]float64) error {
			return all(field(b, "current_revision", v[rev]), field(b, "exists", exists))
		}
	}
	runSteps(t, []step{
		set("create if absent", `{"key":"a","value":"1","if_absent":true}`, 200, "", save("r1", "")),
		get("get shows the revision", "/kv/get?key=a", 200, "", func(b map[string]any, v map[string]float64) error {
			return all(field(b, "value", "1"), field(b, "revision", v["r1"]))
		}),
		set("create if absent again fails", `{"key":"a","value":"2","if_absent":true}`, 409, errcode.ConditionFailed, conflict("r1", true)),
		set("if_revision=0 is if_absent", `{"key":"a","value":"2","if_revision":0}`, 409, errcode.ConditionFailed, conflict("r1", true)),
		get("a failed condition changed nothing", "/kv/get?key=a", 200, "", func(b map[string]any, v map[string]float64) error {
			return all(field(b, "value", "1"), field(b, "revision", v["r1"]))
		}),
		set("compare and set with prev", `{"key":"a","value":"2","if_revision":1,"prev":true}`, 200, "", func(b map[string]any, v map[string]float64) error {
			p, _ := b["prev"].(map[string]any)
			return all(save("r2", "r1")(b, v), field(p, "value", "1"), field(p, "revision", v["r1"]))
		}),
		set("a stale revision fails", `{"key":"a","value":"3","if_revision":1}`, 409, errcode.ConditionFailed, conflict("r2", true)),
		set("condition as a query parameter", `{"key":"a","value":"3"}`, 200, "", nil),
		post("a stale conditional delete fails", "/kv/delete?key=a&if_revision=1", 409, errcode.ConditionFailed, nil),
		post("delete if exists, with prev", "/kv/delete?key=a&if_exists=true&prev=true", 200, "", func(b map[string]any, v map[string]float64) error {
			p, _ := b["prev"].(map[string]any)
			return all(field(b, "status", "deleted"), field(b, "deleted", true), field(p, "value", "3"), save("rdel", "r2")(b, v))
		}),
		// Consul's cas delete of a deleted key answered true (#348).
		post("delete if exists of a deleted key fails", "/kv/delete?key=a&if_exists=true", 409, errcode.ConditionFailed, func(b map[string]any, v map[string]float64) error {
			return all(field(b, "current_revision", 0), field(b, "exists", false))
		}),
		post("a plain delete of a missing key changes nothing", "/kv/delete?key=a&prev=true", 200, "", func(b map[string]any, v map[string]float64) error {
			if b["prev"] != nil {
				return fmt.Errorf("prev = %v, want null", b["prev"])
			}
			return all(field(b, "deleted", false), field(b, "revision", 0))
		}),
		set("set if exists of a missing key fails", `{"key":"a","value":"4","if_exists":true}`, 409, errcode.ConditionFailed, nil),
		set("prev of a new key is null", `{"key":"a","value":"5","if_revision":0,"prev":true}`, 200, "", func(b map[string]any, v map[string]float64) error {
			if p, ok := b["prev"]; !ok || p != nil {
				return fmt.Errorf("prev = %v (present %v), want null", p, ok)
			}
			return save("r5", "rdel")(b, v)
		}),
		post("conditional delete at the current revision", "/kv/delete?key=a&if_revision=0", 409, errcode.ConditionFailed, conflict("r5", true)),
	})
}

func TestTTL(t *testing.T) {
	t.Parallel()
	n, c := singleNode(t, 16)
	set := func(body string) map[string]any {
		t.Helper()
		r := doReq(t, c, http.MethodPost, n.url+"/kv/set", []byte(body))
		if r.Status != 200 {
			t.Fatalf("set %s = %d %s", body, r.Status, r.Body)
		}
		return r.Object(t)
	}
	get := func(key, consistency string) apiResp { return kvGet(t, c, n.url, key, consistency) }
	deadline := func(b map[string]any) time.Time {
		t.Helper()
		s, _ := b["expires_at"].(string)
		at, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatalf("expires_at %q: %v", s, err)
		}
		return at
	}

	before := time.Now()
	b := set(`{"key":"t","value":"v","ttl":"1500ms"}`)
	at := deadline(b)
	if at.Before(before.Add(1500*time.Millisecond).Truncate(time.Millisecond)) || at.After(time.Now().Add(1500*time.Millisecond)) {
		t.Fatalf("expires_at %s is not 1.5s after the set (sent %s)", at, before)
	}
	if ms, _ := b["ttl_ms"].(float64); ms <= 0 || ms > 1500 {
		t.Fatalf("ttl_ms = %v", b["ttl_ms"])
	}
	g := get("t", "").Object(t)
	if deadline(g) != at {
		t.Fatalf("get expires_at = %v, want %s", g["expires_at"], at)
	}
	// keep_ttl keeps the deadline; a plain set would clear it.
	if kept := deadline(set(`{"key":"t","value":"w","keep_ttl":true}`)); kept != at {
		t.Fatalf("keep_ttl moved the deadline from %s to %s", at, kept)
	}
	set(`{"key":"plain","value":"v","ttl":"1s"}`)
	if b := set(`{"key":"plain","value":"v2"}`); b["expires_at"] != nil {
		t.Fatalf("a plain set kept the TTL: %v", b)
	}
	set(`{"key":"removed","value":"v","ttl":"1s"}`)
	if r := doReq(t, c, http.MethodPost, n.url+"/kv/expire?key=removed&ttl=0", nil); r.Status != 200 || r.Object(t)["expires_at"] != nil {
		t.Fatalf("expire ttl=0 = %d %s", r.Status, r.Body)
	}
	set(`{"key":"refreshed","value":"v","ttl":"1s"}`)
	r := doReq(t, c, http.MethodPost, n.url+"/kv/expire?key=refreshed&ttl=1h", nil)
	if r.Status != 200 || deadline(r.Object(t)).Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("expire ttl=1h = %d %s", r.Status, r.Body)
	}

	time.Sleep(time.Until(at) + 10*time.Millisecond)
	for _, cons := range []string{"", "stale"} {
		apitest.CheckError(t, get("t", cons), 404, errcode.KeyNotFound)
	}
	// An expired key is absent to conditions too.
	if r := doReq(t, c, http.MethodPost, n.url+"/kv/set", []byte(`{"key":"t","value":"again","if_absent":true}`)); r.Status != 200 {
		t.Fatalf("if_absent on an expired key = %d %s", r.Status, r.Body)
	}
	for key, want := range map[string]string{"plain": "v2", "removed": "v", "refreshed": "v", "t": "again"} {
		apitest.MustValue(t, get(key, ""), key, want)
	}
	apitest.CheckError(t, doReq(t, c, http.MethodPost, n.url+"/kv/expire?key=never&ttl=5s", nil), 404, errcode.KeyNotFound)

	// The sweep deletes expired keys from storage, not only from view.
	set(`{"key":"swept","value":"v","ttl":"1s"}`)
	p := n.eng.PartitionOf("swept")
	deadlineSweep := time.Now().Add(5 * time.Second)
	for {
		if _, ok, err := n.db.Get(p, []byte("swept")); err == nil && !ok {
			break
		}
		if time.Now().After(deadlineSweep) {
			t.Fatal("expired key still in storage 4 s after its deadline")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestBatch(t *testing.T) {
	t.Parallel()
	n, c := singleNode(t, 16)
	batch := func(body string) (int, map[string]any) {
		t.Helper()
		r := doReq(t, c, http.MethodPost, n.url+"/kv/batch", []byte(body))
		if r.Status != 200 {
			return r.Status, r.Object(t)
		}
		return r.Status, r.Object(t)
	}
	results := func(b map[string]any) []map[string]any {
		var out []map[string]any
		list, _ := b["results"].([]any)
		for _, x := range list {
			m, _ := x.(map[string]any)
			out = append(out, m)
		}
		return out
	}
	kvSet(t, c, n.url, "{u}seen", "old")

	status, b := batch(`{"ops":[{"op":"set","key":"k1","value":"a"},{"op":"get","key":"{u}seen"},{"op":"get","key":"nope"},
		{"op":"delete","key":"k1","if_revision":12345},{"op":"set","key":"k2","value":"b","ttl":"1h"}]}`)
	res := results(b)
	if status != 200 || len(res) != 5 {
		t.Fatalf("batch = %d %v", status, b)
	}
	for i, want := range []struct {
		status int
		code   string
	}{{200, ""}, {200, ""}, {404, errcode.KeyNotFound}, {409, errcode.ConditionFailed}, {200, ""}} {
		if err := all(field(res[i], "status", want.status)); err != nil {
			t.Fatalf("result %d: %v (%v)", i, err, res[i])
		}
		if want.code != "" {
			if err := field(res[i], "code", want.code); err != nil {
				t.Fatalf("result %d: %v", i, err)
			}
		}
	}
	if err := all(field(res[1], "value", "old"), field(res[3], "exists", true)); err != nil {
		t.Fatal(err)
	}

	// Atomic: a failed condition leaves every op unapplied.
	status, b = batch(`{"atomic":true,"ops":[{"op":"set","key":"{u}a","value":"1"},{"op":"set","key":"{u}seen","value":"new","if_revision":0},{"op":"get","key":"{u}seen"}]}`)
	res = results(b)
	if status != 200 || b["committed"] != false || len(res) != 3 {
		t.Fatalf("failed atomic batch = %d %v", status, b)
	}
	if err := all(field(res[0], "code", errcode.Aborted), field(res[1], "code", errcode.ConditionFailed)); err != nil {
		t.Fatal(err)
	}
	apitest.CheckError(t, kvGet(t, c, n.url, "{u}a", ""), 404, errcode.KeyNotFound)
	apitest.MustValue(t, kvGet(t, c, n.url, "{u}seen", ""), "{u}seen", "old")

	// And when every condition holds, all of it is applied together, in
	// one partition, at consecutive revisions.
	status, b = batch(`{"atomic":true,"ops":[{"op":"set","key":"{u}a","value":"1","if_absent":true},{"op":"delete","key":"{u}seen","if_exists":true},{"op":"get","key":"{u}a"}]}`)
	res = results(b)
	if status != 200 || b["committed"] != true {
		t.Fatalf("atomic batch = %d %v", status, b)
	}
	r0, _ := res[0]["revision"].(float64)
	if err := all(field(res[1], "revision", r0+1), field(res[2], "value", "1"), field(res[2], "revision", r0)); err != nil {
		t.Fatal(err)
	}
	apitest.CheckError(t, kvGet(t, c, n.url, "{u}seen", ""), 404, errcode.KeyNotFound)

	// A batch of many keys over many partitions.
	var ops []string
	for i := range engine.MaxBatchOps {
		ops = append(ops, fmt.Sprintf(`{"op":"set","key":"many-%d","value":"%d"}`, i, i))
	}
	if status, b := batch(`{"ops":[` + strings.Join(ops, ",") + `]}`); status != 200 || len(results(b)) != engine.MaxBatchOps {
		t.Fatalf("batch of %d = %d", engine.MaxBatchOps, status)
	}
	apitest.MustValue(t, kvGet(t, c, n.url, "many-321", ""), "many-321", "321")
}

// Bad input is refused with a clear code, and changes nothing.
func TestBadWriteOptions(t *testing.T) {
	t.Parallel()
	n, c := singleNode(t, 16)
	kvSet(t, c, n.url, "k", "v")
	other := "other"
	for i := 0; n.eng.PartitionOf(other) == n.eng.PartitionOf("k"); i++ {
		other = fmt.Sprintf("other-%d", i)
	}
	tooMany := `{"ops":[` + strings.TrimSuffix(strings.Repeat(`{"op":"get","key":"k"},`, engine.MaxBatchOps+1), ",") + `]}`
	tests := []struct {
		name, method, path, body string
		status                   int
		code                     string
	}{
		{"if_revision not a number", "POST", "/kv/delete?key=k&if_revision=abc", "", 400, errcode.InvalidCondition},
		{"negative if_revision", "POST", "/kv/set", `{"key":"k","value":"x","if_revision":-1}`, 400, errcode.InvalidCondition},
		{"fractional if_revision", "POST", "/kv/set", `{"key":"k","value":"x","if_revision":1.5}`, 400, errcode.InvalidCondition},
		{"if_revision as a string", "POST", "/kv/set", `{"key":"k","value":"x","if_revision":"1"}`, 400, errcode.InvalidJSON},
		{"if_absent and if_exists", "POST", "/kv/set", `{"key":"k","value":"x","if_absent":true,"if_exists":true}`, 400, errcode.InvalidCondition},
		{"if_absent and a revision", "POST", "/kv/set?if_revision=4&if_absent=true", `{"key":"k","value":"x"}`, 400, errcode.InvalidCondition},
		{"if_absent not a bool", "POST", "/kv/delete?key=k&if_absent=maybe", "", 400, errcode.InvalidCondition},
		{"body and query disagree", "POST", "/kv/set?if_revision=2", `{"key":"k","value":"x","if_revision":3}`, 400, errcode.BadRequest},
		{"negative ttl", "POST", "/kv/set", `{"key":"k","value":"x","ttl":"-5s"}`, 400, errcode.InvalidTTL},
		{"zero ttl on set", "POST", "/kv/set", `{"key":"k","value":"x","ttl":"0s"}`, 400, errcode.InvalidTTL},
		{"ttl below the minimum", "POST", "/kv/set", `{"key":"k","value":"x","ttl":"10ms"}`, 400, errcode.InvalidTTL},
		{"absurd ttl", "POST", "/kv/set", `{"key":"k","value":"x","ttl":"1000000h"}`, 400, errcode.InvalidTTL},
		{"ttl not a duration", "POST", "/kv/set", `{"key":"k","value":"x","ttl":"soon"}`, 400, errcode.InvalidTTL},
		{"ttl as a number", "POST", "/kv/set", `{"key":"k","value":"x","ttl":30}`, 400, errcode.InvalidJSON},
		{"ttl and keep_ttl", "POST", "/kv/set", `{"key":"k","value":"x","ttl":"5s","keep_ttl":true}`, 400, errcode.InvalidTTL},
		{"ttl on a delete", "POST", "/kv/delete?key=k&ttl=5s", "", 400, errcode.InvalidTTL},
		{"expire without ttl", "POST", "/kv/expire?key=k", "", 400, errcode.InvalidTTL},
		{"expire with a bad ttl", "POST", "/kv/expire?key=k&ttl=-1s", "", 400, errcode.InvalidTTL},
		{"min_copies of zero", "POST", "/kv/set", `{"key":"k","value":"x","min_copies":0}`, 400, errcode.BadRequest},
		{"min_copies over the limit", "POST", "/kv/delete?key=k&min_copies=9", "", 400, errcode.BadRequest},
		{"min_copies over the replication factor", "POST", "/kv/set", `{"key":"k","value":"x","min_copies":2}`, 400, errcode.BadRequest},
		{"empty batch", "POST", "/kv/batch", `{"ops":[]}`, 400, errcode.BadRequest},
		{"batch over the op limit", "POST", "/kv/batch", tooMany, 413, errcode.TooManyOps},
		{"batch over the byte limit", "POST", "/kv/batch", `{"ops":[` + strings.TrimSuffix(strings.Repeat(`{"op":"set","key":"b","value":"`+strings.Repeat("v", 900_000)+`"},`, 5), ",") + `]}`, 413, errcode.TooManyOps},
		{"unknown batch op", "POST", "/kv/batch", `{"ops":[{"op":"incr","key":"k"}]}`, 400, errcode.BadRequest},
		{"batch op without a key", "POST", "/kv/batch", `{"ops":[{"op":"get"}]}`, 400, errcode.MissingKey},
		{"batch set without a value", "POST", "/kv/batch", `{"ops":[{"op":"set","key":"k"}]}`, 400, errcode.MissingValue},
		{"batch with a bad condition", "POST", "/kv/batch", `{"ops":[{"op":"set","key":"k","value":"x","if_absent":true,"if_exists":true}]}`, 400, errcode.InvalidCondition},
		{"min_copies on a batch op", "POST", "/kv/batch", `{"ops":[{"op":"set","key":"k","value":"x","min_copies":1}]}`, 400, errcode.BadRequest},
		{"atomic batch across partitions", "POST", "/kv/batch", `{"atomic":true,"ops":[{"op":"set","key":"k","value":"x"},{"op":"set","key":"` + other + `","value":"x"}]}`, 400, errcode.CrossPartition},
		{"stale get in an atomic batch", "POST", "/kv/batch", `{"atomic":true,"ops":[{"op":"get","key":"k","consistency":"stale"}]}`, 400, errcode.BadRequest},
		{"batch is not JSON", "POST", "/kv/batch", `{"ops":`, 400, errcode.InvalidJSON},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			apitest.CheckError(t, doReq(t, c, tt.method, n.url+tt.path, body), tt.status, tt.code)
		})
	}
	g := kvGet(t, c, n.url, "k", "")
	apitest.MustValue(t, g, "k", "v")
	var got struct{ Revision uint64 }
	if err := json.Unmarshal(g.Body, &got); err != nil || got.Revision == 0 {
		t.Fatalf("revision of k after the refused writes: %s", g.Body)
	}
}
