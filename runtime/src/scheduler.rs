//! Continuous batching as a pure state machine: which sequences run this step, with how many
//! tokens each, under a token budget, a sequence cap and the KV pool's free blocks.
//!
//! Policy: running sequences first, in admission order (decodes take one token, a prompt still
//! being prefilled takes a chunk of what budget is left); then waiting ones, first come first
//! served, as prefill chunks. When blocks run out the newest running sequence is preempted: its
//! blocks are freed and it is put back at the head of the queue, to be recomputed (prompt plus
//! what it generated) when blocks are free again. It is never dropped. No model code here.
//!
//! Admission starts a sequence from the longest cached prefix of its tokens
//! ([`KvPool::lookup_prefix`]), so only the rest is computed; a preempted sequence usually finds
//! its own blocks again. Whoever runs the plan commits the blocks it completes
//! ([`Scheduler::commit_blocks`]).

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
    /// Blocks, while admitted.
    pub table: Option<BlockTable>,
}

/// One sequence's share of a step: feed `tokens[start..start + len]`; `logits` when that
/// reaches the end of the sequence, so the next token is sampled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Planned {
    pub id: u64,
    pub start: usize,
    pub len: usize,
    pub logits: bool,
}

#[derive(Default)]
pub struct Scheduler {
    pub limits: Limits,
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
    pub fn new(limits: Limits) -> Scheduler {
        Scheduler { limits, ..Scheduler::default() }
    }

    /// Queues a new sequence (its prompt as `tokens`).
    pub fn add(&mut self, id: u64, tokens: Vec<u32>) {
        self.seqs.insert(id, Seq { tokens, computed: 0, table: None });
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

    /// Plans one step. Admitted sequences get their block tables here, holding whatever prefix
    /// was cached (their `computed` starts there); the forward pass grows them, and the plan
    /// guarantees the pool has the blocks.
    pub fn plan(&mut self, pool: &KvPool) -> Vec<Planned> {
        let mut budget = self.limits.max_batch_tokens;
        let mut free = pool.free_blocks();
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
            let need = pool.blocks_needed(seq.table.as_ref().expect("running has a table"), n);
            if need > free {
                // Free blocks by preempting the newest sequence (possibly this one).
                let victim = self.preempt_newest().expect("running is not empty");
                free = pool.free_blocks() - out.iter().map(|p: &Planned| self.planned_need(pool, p)).sum::<usize>();
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
            let before = pool.free_blocks();
            let table = pool.lookup_prefix(&seq.tokens);
            // Reused blocks nobody else was using were counted as free until now.
            let revived = before - pool.free_blocks();
            let reused = table.len();
            let n = (seq.tokens.len() - reused).min(budget);
            let need = pool.blocks_needed(&table, n) + revived;
            if need > free {
                // Dropping the table puts the reused blocks back as they were.
                break;
            }
            if pool.prefix_caching() {
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

    /// Commits to the prefix cache the full blocks that `plan` completed, for later sequences
    /// to share. Call it once the plan ran (keys and values written, `computed` advanced).
    pub fn commit_blocks(&mut self, pool: &KvPool, plan: &[Planned]) {
        for p in plan {
            if let Some(Seq { tokens, table: Some(table), .. }) = self.seqs.get_mut(&p.id) {
                pool.commit_full_blocks(table, tokens);
            }
        }
    }

    /// Blocks a planned entry will take from the pool (re-derived after a preemption changed
    /// the free count).
    fn planned_need(&self, pool: &KvPool, p: &Planned) -> usize {
        self.seqs[&p.id].table.as_ref().map_or(0, |t| pool.blocks_needed(t, p.len))
    }
}
