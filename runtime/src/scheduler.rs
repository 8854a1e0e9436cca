//! Continuous batching: which sequences run this step, with how many tokens each, under a token
//! budget, a sequence cap and the KV pool's free blocks. No model code here.
//!
//! The scheduler owns the KV pool and every sequence's block table. Blocks flow one way:
//! [`Scheduler::schedule`] admits, preempts, grows each chosen sequence's table by the positions
//! it will compute and hands the step a [`Batch`] that owns those tables; the forward pass only
//! writes keys and values into them; [`Scheduler::complete`] takes the tables back, advances the
//! sequences and commits their completed blocks to the prefix cache (or, if the step failed,
//! shrinks the tables back to where they were).
//!
//! Policy: running sequences first, in admission order (decodes take one token, a prompt still
//! being prefilled takes a chunk of what budget is left); then waiting ones, first come first
//! served, as prefill chunks. When blocks run out the newest running sequence is preempted: its
//! blocks are freed and it is put back at the head of the queue, to be recomputed (prompt plus
//! what it generated) when blocks are free again. It is never dropped.
//!
//! Admission starts a sequence from the longest cached prefix of its tokens
//! ([`KvPool::lookup_prefix`]), so only the rest is computed; a preempted sequence usually finds
//! its own blocks again.

use crate::kv_cache::{BlockTable, KvPool, BLOCK_TOKENS};
use std::collections::{HashMap, VecDeque};

/// Per-step limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Tokens (prefill chunks + decodes) one step may process: bounds the step's latency.
    pub max_batch_tokens: usize,
    /// Sequences admitted at once.
    pub max_seqs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_batch_tokens: 512, max_seqs: 64 }
    }
}

/// A sequence as the scheduler sees it.
pub struct Seq {
    /// Prompt followed by the generated tokens.
    pub tokens: Vec<u32>,
    /// Positions of `tokens` already in the KV cache.
    pub computed: usize,
    /// Blocks, while admitted and not lent to a running step.
    table: Option<BlockTable>,
    /// Whether admission may start it from a cached prefix.
    reuse: bool,
}

/// One sequence's share of a step: feed `tokens[start..start + len]`; `logits` when that
/// reaches the end of the sequence, so the next token is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Planned {
    id: u64,
    start: usize,
    len: usize,
    logits: bool,
}

/// One sequence in a step: its new tokens (positions `start..start + tokens.len()`) and its block
/// table, already grown to hold them.
pub struct Scheduled {
    pub id: u64,
    pub tokens: Vec<u32>,
    pub start: usize,
    pub table: BlockTable,
    /// The chunk reaches the end of the sequence: its last position's logits pick the next token.
    pub logits: bool,
}

/// A step's sequences, in plan order. Owns their block tables until handed back to
/// [`Scheduler::complete`].
#[derive(Default)]
pub struct Batch {
    pub seqs: Vec<Scheduled>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// Tokens in the step.
    pub fn tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.tokens.len()).sum()
    }
}

pub struct Scheduler {
    pub limits: Limits,
    pool: KvPool,
    seqs: HashMap<u64, Seq>,
    waiting: VecDeque<u64>,
    /// Admitted sequences, oldest first.
    running: Vec<u64>,
    pub preemptions: u64,
    /// Full blocks looked up in the prefix cache at admission (every one but the block holding
    /// the last token), and of those, how many were found and reused.
    pub prefix_queries: u64,
    pub prefix_hits: u64,
}

impl Scheduler {
    pub fn new(limits: Limits, pool: KvPool) -> Scheduler {
        Scheduler {
            limits,
            pool,
            seqs: HashMap::new(),
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            prefix_queries: 0,
            prefix_hits: 0,
        }
    }

    pub fn pool(&self) -> &KvPool {
        &self.pool
    }

    /// The pool, for the forward pass to write a [`Batch`]'s keys and values into.
    pub fn pool_mut(&mut self) -> &mut KvPool {
        &mut self.pool
    }

    /// Queues a new sequence (its prompt as `tokens`).
    pub fn add(&mut self, id: u64, tokens: Vec<u32>) {
        self.seqs.insert(id, Seq { tokens, computed: 0, table: None, reuse: true });
        self.waiting.push_back(id);
    }

    /// [`Scheduler::add`] for a sequence that must compute every position itself (it wants
    /// every position's logits), so it takes nothing from the prefix cache. Its own completed
    /// blocks are still committed for others.
    pub fn add_uncached(&mut self, id: u64, tokens: Vec<u32>) {
        self.seqs.insert(id, Seq { tokens, computed: 0, table: None, reuse: false });
        self.waiting.push_back(id);
    }

    /// Removes a sequence (finished or cancelled), freeing its blocks.
    pub fn remove(&mut self, id: u64) -> Option<Seq> {
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        self.seqs.remove(&id)
    }

    pub fn get(&self, id: u64) -> Option<&Seq> {
        self.seqs.get(&id)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Seq> {
        self.seqs.get_mut(&id)
    }

    pub fn n_running(&self) -> usize {
        self.running.len()
    }

    pub fn n_waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_idle(&self) -> bool {
        self.seqs.is_empty()
    }

    fn preempt_newest(&mut self) -> Option<u64> {
        let id = self.running.pop()?;
        let seq = self.seqs.get_mut(&id).expect("running sequence exists");
        seq.table = None;
        seq.computed = 0;
        self.waiting.push_front(id);
        self.preemptions += 1;
        Some(id)
    }

    /// The next step: admits and preempts as the budgets allow, then lends each chosen sequence's
    /// table to the batch, grown to hold its new positions. Admitted sequences start from
    /// whatever prefix was cached (their `computed` starts there). Hand the batch back to
    /// [`Scheduler::complete`] before the next call.
    pub fn schedule(&mut self) -> Batch {
        let plan = self.plan();
        let seqs = plan
            .into_iter()
            .map(|p| {
                let seq = self.seqs.get_mut(&p.id).expect("planned sequence exists");
                let mut table = seq.table.take().expect("planned sequence is admitted");
                let start = self.pool.grow(&mut table, p.len).expect("the plan counted these blocks");
                debug_assert_eq!(start, p.start);
                let tokens = seq.tokens[p.start..p.start + p.len].to_vec();
                Scheduled { id: p.id, tokens, start: p.start, table, logits: p.logits }
            })
            .collect();
        Batch { seqs }
    }

    /// Takes back a batch's tables. If the step ran, its sequences advance and the full blocks
    /// it completed are committed to the prefix cache, for later sequences to share; if it
    /// failed, each table shrinks back to where it was.
    pub fn complete(&mut self, batch: Batch, ran: bool) {
        for s in batch.seqs {
            let Scheduled { id, start, mut table, tokens, .. } = s;
            // The engine finishes sequences only between steps, so every one is still here.
            let seq = self.seqs.get_mut(&id).expect("a batch's sequences outlive the step");
            if ran {
                seq.computed = start + tokens.len();
                self.pool.commit_full_blocks(&mut table, &seq.tokens);
            } else {
                table.truncate(start);
            }
            seq.table = Some(table);
        }
    }

    /// Plans one step; the pool is guaranteed to have the blocks it needs.
    fn plan(&mut self) -> Vec<Planned> {
        let mut budget = self.limits.max_batch_tokens;
        let mut free = self.pool.free_blocks();
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let id = self.running[i];
            let seq = &self.seqs[&id];
            let n = (seq.tokens.len() - seq.computed).min(budget);
            if n == 0 {
                i += 1;
                continue;
            }
            let need = self.pool.blocks_needed(seq.table.as_ref().expect("running has a table"), n);
            if need > free {
                // Free blocks by preempting the newest sequence (possibly this one).
                let victim = self.preempt_newest().expect("running is not empty");
                free = self.pool.free_blocks() - out.iter().map(|p: &Planned| self.planned_need(p)).sum::<usize>();
                if victim == id {
                    break;
                }
                continue;
            }
            let seq = &self.seqs[&id];
            out.push(Planned { id, start: seq.computed, len: n, logits: seq.computed + n == seq.tokens.len() });
            free -= need;
            budget -= n;
            i += 1;
        }
        while let Some(&id) = self.waiting.front() {
            if budget == 0 || self.running.len() >= self.limits.max_seqs {
                break;
            }
            let seq = self.seqs.get_mut(&id).expect("waiting sequence exists");
            let before = self.pool.free_blocks();
            let table = self.pool.lookup_prefix(if seq.reuse { &seq.tokens } else { &[] });
            // Reused blocks nobody else was using were counted as free until now.
            let revived = before - self.pool.free_blocks();
            let reused = table.len();
            let n = (seq.tokens.len() - reused).min(budget);
            let need = self.pool.blocks_needed(&table, n) + revived;
            if need > free {
                // Dropping the table puts the reused blocks back as they were.
                break;
            }
            if self.pool.prefix_caching() {
                self.prefix_queries += (seq.tokens.len().saturating_sub(1) / BLOCK_TOKENS) as u64;
                self.prefix_hits += (reused / BLOCK_TOKENS) as u64;
            }
            seq.computed = reused;
            seq.table = Some(table);
            self.waiting.pop_front();
            self.running.push(id);
            out.push(Planned { id, start: reused, len: n, logits: reused + n == seq.tokens.len() });
            free -= need;
            budget -= n;
        }
        out
    }

    /// Blocks a planned entry will take from the pool (re-derived after a preemption changed
    /// the free count).
    fn planned_need(&self, p: &Planned) -> usize {
        self.seqs[&p.id].table.as_ref().map_or(0, |t| self.pool.blocks_needed(t, p.len))
    }
}
