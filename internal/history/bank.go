package history

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// BankValue is the value the bank workload writes to an account: its new
// balance, the change that brought it there from the balance the writer
// read, and a number unique to the write (values are unique per key, as
// the checks want). A write whose if_revision held took effect on exactly
// the state its writer read, so its change is exactly what it did to the
// balance; CheckBank adds them up.
func BankValue(balance, change int, unique int64) string {
	return fmt.Sprintf("%d:%+d:%d", balance, change, unique)
}

// ParseBankValue returns the balance and the change in a BankValue.
func ParseBankValue(v string) (balance, change int, err error) {
	parts := strings.Split(v, ":")
	if len(parts) != 3 {
		return 0, 0, fmt.Errorf("value %q is not balance:change:unique", v)
	}
	if balance, err = strconv.Atoi(parts[0]); err == nil {
		change, err = strconv.Atoi(parts[1])
	}
	if err != nil {
		return 0, 0, fmt.Errorf("value %q is not balance:change:unique: %w", v, err)
	}
	return balance, change, nil
}

// Bank is what CheckBank checks a history against: the accounts (all of
// one partition, at most maxAccounts) and the total of their balances.
type Bank struct {
	Accounts []string
	Total    int
}

// maxAccounts bounds a bank's accounts, so that a vector of balances is an
// array (comparable: a map key).
const maxAccounts = 8

type balances [maxAccounts]int

// maxSubsets bounds how many distinct sums of transfers with an unknown
// outcome CheckBank keeps while it looks for the one that explains the
// final balances; past it the question is left undecided.
const maxSubsets = 1 << 20

// BankReport is CheckBank's verdict.
type BankReport struct {
	// Problems has one message per violation.
	Problems []string
	// Snapshots counts committed atomic batches that showed every
	// account, by the node they were sent through.
	Snapshots map[string]int
	// Atomic batches that wrote accounts: Committed (applied), Rejected
	// (certainly not applied) and Unknown (their outcome); Applied is
	// the fewest of the unknown ones that explain the final balances
	// (-1 if none do, or the question was undecided). Of the unknown
	// ones, Seen were shown applied (a read returned a value one of them
	// wrote), Superseded shown not applied (a committed batch was
	// conditional on the same revision of one of their keys).
	Committed, Rejected, Unknown, Applied int
	Seen, Superseded                      int
	// Undecided: too many combinations of unknown transfers to tell
	// whether some explain the final balances (not a violation found,
	// nor a pass).
	Undecided bool
	// Final is the balances every final read showed, by account.
	Final []int
}

// OK reports whether no problem was found.
func (r BankReport) OK() bool { return len(r.Problems) == 0 }

// SnapshotCount is how many snapshots were checked, through any node.
func (r BankReport) SnapshotCount() int {
	n := 0
	for _, c := range r.Snapshots {
		n += c
	}
	return n
}

// CheckBank checks the bank workload's history: accounts written only by
// atomic batches of BankValue sets with if_revision (the first ones, which
// set the initial balances, with if_revision=0 and the balance as the
// change), and read by atomic batches of gets. finals are the IDs of the
// batches that read every account once everything had settled.
//
//   - Every committed atomic batch that shows every account (its gets,
//     and its writes' values for the accounts it wrote after reading them)
//     shows balances that add up to the total, whichever node it was sent
//     through: no transfer is ever seen half done. An absent account counts
//     0, so the accounts must be set up before anything reads them.
//   - The final reads are committed, show every account and agree with
//     each other, and their balances are the changes of every committed
//     batch added up, plus those of some subset of the batches with an
//     unknown outcome, each of which took effect all or not at all: no
//     acknowledged transfer is lost, none is applied twice, no money
//     appears or disappears. The subset must hold every batch with an
//     unknown outcome that a read showed applied (a read returned a value
//     it wrote: values are unique), and none that a committed batch shows
//     was not: one conditional on the same revision of a key, as only one
//     write can follow a revision. That settles most of them, and keeps
//     the search for the rest small.
//
// That batches are all or nothing is CheckBatches's; a batch that is not
// counts here as one with an unknown outcome, so as not to report it
// twice.
func CheckBank(h History, bank Bank, finals []int) BankReport {
	rep := BankReport{Snapshots: map[string]int{}, Applied: -1}
	problem := func(format string, args ...any) {
		rep.Problems = append(rep.Problems, fmt.Sprintf(format, args...))
	}
	n := len(bank.Accounts)
	if n == 0 || n > maxAccounts {
		problem("a bank needs 1 to %d accounts, not %d", maxAccounts, n)
		return rep
	}
	account := map[string]int{}
	for i, a := range bank.Accounts {
		account[a] = i
	}
	for _, o := range h.Ops {
		if _, ok := account[o.Key]; ok && o.Kind != Read && o.Batch == 0 {
			problem("%s wrote an account outside an atomic batch", o)
		}
	}

	// The values reads returned, and the conditions committed batches
	// met.
	type cond struct {
		key string
		rev uint64
	}
	read := map[string]map[string]bool{}
	met := map[cond]Batch{}
	for _, o := range h.Ops {
		if _, ok := account[o.Key]; ok && o.Kind == Read && o.Outcome == OK && o.Found {
			if read[o.Key] == nil {
				read[o.Key] = map[string]bool{}
			}
			read[o.Key][o.Value] = true
		}
	}

	idx := indexOps(h)
	var acked balances
	type maybeBatch struct {
		b      Batch
		ops    []Op
		change balances
	}
	var maybes []maybeBatch
	snapshots := map[int]balances{} // by batch ID
	for _, b := range h.Batches {
		ops := idx.of(b)
		var change balances
		writes := false
		for _, o := range ops {
			i, ok := account[o.Key]
			if !ok || o.Kind == Read {
				continue
			}
			writes = true
			if o.Kind != Write {
				problem("%s: the bank's accounts are only set, never deleted", o)
				continue
			}
			_, c, err := ParseBankValue(o.Value)
			if err != nil {
				problem("%s: %v", o, err)
			}
			change[i] += c
		}
		if writes && !b.Atomic {
			problem("%s wrote accounts in a plain batch", b)
			continue
		}
		if !b.Atomic {
			continue
		}
		f, _ := atomicFate(b, ops)
		switch f {
		case committed:
			if writes {
				rep.Committed++
				for i := range n {
					acked[i] += change[i]
				}
				for _, o := range ops {
					if o.Kind != Read && o.HasIfRevision {
						met[cond{o.Key, o.IfRevision}] = b
					}
				}
			}
			if bal, ok := bankSnapshot(ops, account); ok {
				snapshots[b.ID] = bal
				rep.Snapshots[b.Node]++
				if sum := sumOf(bal, n); sum != bank.Total {
					problem("%s shows balances %s adding up to %d, not %d: a transfer seen half done, or money created or lost:\n%s",
						b, describeBalances(bank.Accounts, bal), sum, bank.Total, describeOps(ops))
				}
			}
		case rejected:
			if writes {
				rep.Rejected++
			}
		default:
			if writes {
				rep.Unknown++
				maybes = append(maybes, maybeBatch{b, ops, change})
			}
		}
	}

	// What the other answers say of the batches with an unknown outcome.
	var unknown []balances
	for _, m := range maybes {
		var shown *Op
		var other *Batch
		for _, o := range m.ops {
			if _, ok := account[o.Key]; !ok || o.Kind == Read {
				continue
			}
			if read[o.Key][o.Value] {
				shown = &o
			}
			if w, ok := met[cond{o.Key, o.IfRevision}]; ok && o.HasIfRevision {
				other = &w
			}
		}
		switch {
		case shown != nil && other != nil:
			problem("%s took effect, as a read of the value of %s shows, though %s, committed, was conditional on the same revision",
				m.b, shown, other)
			unknown = append(unknown, m.change)
		case shown != nil:
			rep.Seen++
			for i := range n {
				acked[i] += m.change[i]
			}
		case other != nil:
			rep.Superseded++
		default:
			unknown = append(unknown, m.change)
		}
	}

	// The final state, the same through every node.
	var final *balances
	var first Batch
	for _, id := range finals {
		if id < 1 || id > len(h.Batches) {
			problem("final read: no batch %d", id)
			continue
		}
		b := h.Batches[id-1]
		bal, ok := snapshots[id]
		switch {
		case !ok:
			problem("final read %s did not show every account:\n%s", b, describeOps(idx.of(b)))
		case final == nil:
			final, first = &bal, b
		case bal != *final:
			problem("the final reads disagree: %s shows %s, %s shows %s",
				first, describeBalances(bank.Accounts, *final), b, describeBalances(bank.Accounts, bal))
		}
	}
	if final == nil {
		problem("no final read showed every account")
		return rep
	}
	rep.Final = slices.Clone(final[:n])

	var target balances
	for i := range n {
		target[i] = final[i] - acked[i]
	}
	k, ok, decided := explain(target, unknown, n)
	switch {
	case !decided:
		rep.Undecided = true
	case ok:
		rep.Applied = rep.Seen + k
	default:
		problem("the final balances %s are not those every acknowledged transfer and every one shown applied lead to (%s) plus the changes of any subset of the %d other batches with an unknown outcome (%d more were shown not applied): an acknowledged transfer lost, one applied twice, or money created or lost",
			describeBalances(bank.Accounts, *final), describeBalances(bank.Accounts, acked), len(unknown), rep.Superseded)
	}
	return rep
}

// bankSnapshot is the balances at the end of a committed atomic batch if
// it shows every account: each account's last get, or the value the batch
// last wrote to it. A value that is not a BankValue makes it no snapshot:
// the write of that value is reported, and a get of a value nobody wrote
// is not linearizable.
func bankSnapshot(ops []Op, account map[string]int) (balances, bool) {
	var bal balances
	seen := map[int]bool{}
	for _, o := range ops {
		i, ok := account[o.Key]
		if !ok {
			continue
		}
		if o.Kind == Read && !o.Found {
			bal[i], seen[i] = 0, true
			continue
		}
		b, _, err := ParseBankValue(o.Value)
		if err != nil {
			return bal, false
		}
		bal[i], seen[i] = b, true
	}
	return bal, len(seen) == len(account)
}

// explain looks for a subset of the changes in unknown that adds up to
// target (in the first n accounts), and returns the fewest changes such a
// subset has. decided is false if there were too many sums to keep.
//
// It keeps every distinct sum of a subset of the changes so far, with the
// fewest changes reaching it, but only sums from which the remaining
// changes can still reach target: at most the sum of their sizes away in
// every account. That pruning keeps the set small where it matters, at
// the end.
func explain(target balances, unknown []balances, n int) (fewest int, ok, decided bool) {
	// reach[j] is how far, in each account, the changes from j on can
	// move a sum.
	reach := make([]balances, len(unknown)+1)
	for j := len(unknown) - 1; j >= 0; j-- {
		for i := range n {
			reach[j][i] = reach[j+1][i] + abs(unknown[j][i])
		}
	}
	within := func(s balances, j int) bool {
		for i := range n {
			if abs(target[i]-s[i]) > reach[j][i] {
				return false
			}
		}
		return true
	}
	sums := map[balances]int{}
	if within(balances{}, 0) {
		sums[balances{}] = 0
	}
	for j, c := range unknown {
		next := make(map[balances]int, 2*len(sums))
		keep := func(s balances, k int) {
			if old, ok := next[s]; within(s, j+1) && (!ok || k < old) {
				next[s] = k
			}
		}
		for s, k := range sums {
			keep(s, k)
			var t balances
			for i := range n {
				t[i] = s[i] + c[i]
			}
			keep(t, k+1)
		}
		if len(next) > maxSubsets {
			return 0, false, false
		}
		sums = next
	}
	fewest, ok = sums[target]
	return fewest, ok, true
}

func abs(x int) int {
	if x < 0 {
		return -x
	}
	return x
}

func sumOf(b balances, n int) int {
	s := 0
	for i := range n {
		s += b[i]
	}
	return s
}

func describeBalances(accounts []string, b balances) string {
	parts := make([]string, len(accounts))
	for i, a := range accounts {
		parts[i] = fmt.Sprintf("%s=%d", a, b[i])
	}
	return strings.Join(parts, " ")
}
