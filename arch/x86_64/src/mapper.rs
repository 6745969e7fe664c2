//! [`X86ShadowMapper`]: the shadow region over real 4-level page tables.
//!
//! ```text
//!   PML4 (kernel's)   PDPT            PD              PT              page
//!   [472] ---------> PDPT_Zero ----> PD_Zero -----> PT_Zero ------> ZERO (RO)
//!   [473] ---------> PDPT'  [0] ---> PD'  [5] ----> PT'  [17] ----> private (RW)
//!                           [1..] -> PD_Zero  [..] -> PT_Zero [..] -> ZERO
//!                                             [9] --> PT_Free -----> 0xFF (RO)
//! ```
//!
//! * `map_shared_range` points every entry that covers a whole aligned
//!   block at the shared table of the right size (one PML4 entry maps
//!   512 GiB), and recurses only at the two partial ends.
//! * `map_private` / `map_shared` on one page walk down; a shared (or empty)
//!   table on the way is *unshared*: a fresh frame gets a copy of its 512
//!   entries (same translations) and the parent entry is pointed at the copy.
//!   All frames an operation needs are allocated before anything changes, so
//!   [`MapError::OutOfFrames`] leaves the old mapping intact.
//! * Re-sharing (with [`Config::reshare`]): when a private page goes back
//!   to shared (or a range is remapped) and its table ends up with 512
//!   identical shared entries of one kind, the parent entry is pointed at
//!   that kind's shared table and the copy is freed, up to (not including)
//!   the PML4. A switch between two shared kinds (KMSAN's initialized and
//!   uninitialized pages, KASAN's free and used blocks) does not look: the
//!   page allocator flips kinds on every allocation, and re-sharing there
//!   only traded a 512-entry scan for a table copy at the next flip; such
//!   tables go back when a shrinker asks
//!   ([`X86ShadowMapper::reshare_uniform`]). Tables
//!   covering a pinned range ([`X86ShadowMapper::unshare_range`]) are never
//!   freed.
//! * Frames are given back only after the TLB flush that removes every
//!   translation through them.

use hybrid_shadow::mapper::{Flush, MapError, ShadowMapper, SharedPage};
use x86_64::PhysAddr;

use crate::entry::{is_present, same, target, Encoding, Level, SHARED_MARK};
use crate::frames::FrameSource;
use crate::layout::{PAGE_SIZE, SHADOW_END, SHADOW_START};
use crate::phys::{
    copy_table, fill_frame, read_entry, write_entry, OffsetPhysMem, PhysMem, ENTRIES,
};
use crate::pins::Pins;
use crate::shared::{SharedTables, SHARED_FRAMES, SHARED_TABLES};
use crate::tlb::{LocalInvlpg, TlbFlush};

#[cfg(test)]
mod tests;

/// How the mapper is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// First byte of the shadow region (512 GiB aligned).
    pub shadow_start: usize,
    /// End of the shadow region (exclusive, 512 GiB aligned).
    pub shadow_end: usize,
    /// Free private tables that become uniformly shared again.
    pub reshare: bool,
    /// Set NX in every entry (requires EFER.NXE; the shadow is never executed).
    pub no_execute: bool,
}

impl Config {
    /// Linux's shadow region, re-sharing on, NX on.
    #[must_use]
    pub const fn linux() -> Self {
        Config {
            shadow_start: SHADOW_START,
            shadow_end: SHADOW_END,
            reshare: true,
            no_execute: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::linux()
    }
}

/// Why [`X86ShadowMapper::new`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// The frame source could not supply the 16 shared frames.
    OutOfFrames,
    /// The region is empty or not 512 GiB aligned, or the PML4 is unaligned.
    BadRegion,
    /// A PML4 entry inside the region is already present (owned by someone else).
    RegionInUse,
}

impl core::fmt::Display for InitError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            InitError::OutOfFrames => "no frame left for the shared shadow tables",
            InitError::BadRegion => "shadow region empty or not 512 GiB aligned",
            InitError::RegionInUse => "shadow region already mapped in the PML4",
        })
    }
}

/// Why [`X86ShadowMapper::unshare_range`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrepareError {
    /// No frame left for a page-table page (the tables made so far stay).
    OutOfFrames,
    /// The range is unaligned or outside the shadow region.
    BadAddress,
    /// The range does not fit in the fixed set of pinned ranges.
    TooManyPins,
}

impl From<MapError> for PrepareError {
    fn from(e: MapError) -> Self {
        match e {
            MapError::BadAddress => PrepareError::BadAddress,
            _ => PrepareError::OutOfFrames,
        }
    }
}

impl core::fmt::Display for PrepareError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            PrepareError::OutOfFrames => "no frame left for shadow page tables",
            PrepareError::BadAddress => "address outside the shadow region or unaligned",
            PrepareError::TooManyPins => "too many pinned shadow ranges",
        })
    }
}

/// What a shadow page is backed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// The shared read-only page of this kind.
    Shared(SharedPage),
    /// A private writable frame.
    Private(PhysAddr),
}

/// Counters of the mapper (frames are 4 KiB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapperStats {
    /// Frames held for the shared pages and tables (16, fixed after `new`).
    pub shared_frames: usize,
    /// Of those, page-table pages (12).
    pub shared_tables: usize,
    /// Private page-table pages held now.
    pub private_tables: usize,
    /// Most private page-table pages held at once.
    pub peak_private_tables: usize,
    /// Private shadow pages mapped now.
    pub private_pages: usize,
    /// Most private shadow pages mapped at once.
    pub peak_private_pages: usize,
    /// Shared (or empty) tables replaced by private copies.
    pub unshares: u64,
    /// Private tables replaced by shared ones again.
    pub reshares: u64,
    /// `flush_page` calls made by the mapper itself (not through `Flush`).
    pub page_flushes: u64,
    /// `flush_all` calls made by the mapper.
    pub full_flushes: u64,
}

/// What a page-table entry holds, as the mapper sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Not present.
    Empty,
    /// Points at the shared table (or page) of this kind.
    Shared(SharedPage),
    /// Points at a private table (or page) owned by the mapper.
    Private(PhysAddr),
}

/// The result of walking down private tables towards one address.
#[derive(Clone, Copy, Debug)]
struct Probe {
    /// `tables[l - 1]`: the table of level `l` on the path, valid for `l >= level`.
    tables: [PhysAddr; 4],
    /// The level of the table holding `slot`.
    level: Level,
    /// The first entry on the path that is not a private table
    /// (or the PT entry when every table is private).
    slot: Slot,
}

/// What a deferred item frees once the TLB is flushed.
#[derive(Clone, Copy, Debug)]
enum Freed {
    /// Nothing: only a translation changed.
    Nothing,
    /// A private shadow page.
    Page(PhysAddr),
    /// A private table of this level with everything private below it.
    Table(PhysAddr, Level),
}

/// Deferred frees and flushes.
const PENDING: usize = 32;

#[derive(Clone, Copy, Debug)]
struct Pending {
    items: [(Freed, usize); PENDING],
    len: usize,
    /// A whole-table translation changed: flush everything.
    full: bool,
}

impl Pending {
    const fn new() -> Self {
        Pending {
            items: [(Freed::Nothing, 0); PENDING],
            len: 0,
            full: false,
        }
    }
}

/// The shadow mapper over 4-level x86_64 page tables.
///
/// * `F`: where frames come from ([`FrameSource`]).
/// * `M`: how frames are reached ([`OffsetPhysMem`] in the kernel).
/// * `T`: TLB invalidation ([`LocalInvlpg`] in a single-CPU kernel).
pub struct X86ShadowMapper<F: FrameSource, M: PhysMem = OffsetPhysMem, T: TlbFlush = LocalInvlpg> {
    pml4: PhysAddr,
    mem: M,
    frames: F,
    tlb: T,
    config: Config,
    enc: Encoding,
    shared: SharedTables,
    pins: Pins,
    top_pinned: bool,
    pending: Pending,
    stats: MapperStats,
}

impl<F: FrameSource> X86ShadowMapper<F, OffsetPhysMem, LocalInvlpg> {
    /// The kernel's mapper: Linux's shadow region in the PML4 at `pml4`,
    /// frames reached through the direct map, flushed with `invlpg`.
    ///
    /// # Safety
    ///
    /// As [`X86ShadowMapper::new`], plus: all RAM is mapped at
    /// `DIRECT_MAP_BASE`, the code runs at CPL 0 on the only CPU using the
    /// shadow, and EFER.NXE is set.
    pub unsafe fn kernel(pml4: PhysAddr, frames: F) -> Result<Self, InitError> {
        // SAFETY: forwarded from the caller.
        unsafe {
            Self::new(
                pml4,
                OffsetPhysMem::direct_map(),
                frames,
                LocalInvlpg::new(),
                Config::linux(),
            )
        }
    }
}

impl<F: FrameSource, M: PhysMem, T: TlbFlush> X86ShadowMapper<F, M, T> {
    /// A mapper for the region `config.shadow_start..config.shadow_end` of
    /// the PML4 at `pml4`. Allocates the 16 shared frames; maps nothing yet
    /// (call [`ShadowMapper::map_shared_range`], or [`crate::init`]).
    ///
    /// # Safety
    ///
    /// `pml4` is a page-table root reachable through `mem`; the PML4 entries
    /// of the region belong to this mapper from now on and nothing else
    /// writes them or the tables below; `frames` and `mem` fulfil their
    /// contracts for each other; if the PML4 is live (in CR3), `tlb` flushes
    /// it; if `config.no_execute`, EFER.NXE is set.
    pub unsafe fn new(
        pml4: PhysAddr,
        mem: M,
        frames: F,
        tlb: T,
        config: Config,
    ) -> Result<Self, InitError> {
        // SAFETY: forwarded from the caller (no early shadow to take over).
        unsafe { Self::build(pml4, mem, frames, tlb, config, false) }
    }

    /// [`Self::new`] over a region that an early zero shadow may map
    /// already ([`crate::early::map_early_shadow`], Linux's
    /// `kasan_early_init`): after building its shared structures (while
    /// the early shadow still answers the inline checks of whatever the
    /// frame source runs), the mapper points every PML4 entry of the
    /// region at its shared [`SharedPage::Zero`] tables and flushes the
    /// TLB once. The translation stays "zero everywhere" throughout, so an
    /// inline check between two instructions sees no change. The early
    /// frames are never read, written or freed by the mapper; they are
    /// unused once this returns. Empty PML4 entries are mapped the same way.
    ///
    /// # Safety
    ///
    /// As [`Self::new`], except that the region's PML4 entries may be
    /// present: each present one maps read-only memory that reads as zero
    /// everywhere and is no table of this mapper's frame source.
    pub unsafe fn new_over_early(
        pml4: PhysAddr,
        mem: M,
        frames: F,
        tlb: T,
        config: Config,
    ) -> Result<Self, InitError> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::build(pml4, mem, frames, tlb, config, true) }
    }

    /// [`Self::new`] and [`Self::new_over_early`].
    ///
    /// # Safety
    ///
    /// As [`Self::new`]; with `over_early`, as [`Self::new_over_early`].
    unsafe fn build(
        pml4: PhysAddr,
        mem: M,
        mut frames: F,
        tlb: T,
        config: Config,
        over_early: bool,
    ) -> Result<Self, InitError> {
        const SLOT: usize = 1 << 39;
        if config.shadow_start >= config.shadow_end
            || !config.shadow_start.is_multiple_of(SLOT)
            || !config.shadow_end.is_multiple_of(SLOT)
            || !pml4.is_aligned(4096u64)
        {
            return Err(InitError::BadRegion);
        }
        let mut va = config.shadow_start;
        while va < config.shadow_end && !over_early {
            // SAFETY: the PML4 is reachable through `mem` (caller).
            if is_present(unsafe { read_entry(&mem, pml4, Level::Pml4.index(va)) }) {
                return Err(InitError::RegionInUse);
            }
            va += SLOT;
        }
        let enc = Encoding::new(config.no_execute);
        // SAFETY: `frames` and `mem` fit together (caller).
        let shared =
            unsafe { SharedTables::build(&mut frames, &mem, enc) }.ok_or(InitError::OutOfFrames)?;
        let mut m = X86ShadowMapper {
            pml4,
            mem,
            frames,
            tlb,
            config,
            enc,
            shared,
            pins: Pins::default(),
            top_pinned: false,
            pending: Pending::new(),
            stats: MapperStats {
                shared_frames: SHARED_FRAMES,
                shared_tables: SHARED_TABLES,
                ..MapperStats::default()
            },
        };
        if over_early {
            m.take_over_early();
        }
        Ok(m)
    }

    /// Point every PML4 entry of the region at the shared zero PDPT (what
    /// [`ShadowMapper::map_shared_range`] would do over the whole region,
    /// without looking at what the early entries point at), then flush.
    fn take_over_early(&mut self) {
        let zero = self
            .enc
            .shared(self.shared.target(SharedPage::Zero, Level::Pml4));
        let mut va = self.config.shadow_start;
        while va < self.config.shadow_end {
            self.write(self.pml4, Level::Pml4.index(va), zero);
            va += Level::Pml4.span();
        }
        self.tlb.flush_all();
        self.stats.full_flushes += 1;
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &MapperStats {
        &self.stats
    }

    /// The PML4 this mapper writes.
    #[must_use]
    pub fn pml4(&self) -> PhysAddr {
        self.pml4
    }

    /// The frame source.
    pub fn frames(&self) -> &F {
        &self.frames
    }

    /// The frame source, mutably.
    pub fn frames_mut(&mut self) -> &mut F {
        &mut self.frames
    }

    /// The physical-memory accessor.
    pub fn phys_mem(&self) -> &M {
        &self.mem
    }

    /// The TLB flusher.
    pub fn tlb_mut(&mut self) -> &mut T {
        &mut self.tlb
    }

    /// The pinned shadow ranges (rounded out to 2 MiB).
    pub fn pinned_ranges(&self) -> &[(usize, usize)] {
        self.pins.ranges()
    }

    /// Whether the PML4 entries of the region are fixed (see [`Self::pin_top_level`]).
    #[must_use]
    pub fn top_level_pinned(&self) -> bool {
        self.top_pinned
    }

    /// The physical address of the shared page of `kind`.
    #[must_use]
    pub fn shared_page(&self, kind: SharedPage) -> PhysAddr {
        self.shared.target(kind, Level::Pt)
    }

    /// What backs the shadow page containing `va`, by walking the tables
    /// (`None` outside the region or where nothing is mapped).
    #[must_use]
    pub fn translate(&self, va: usize) -> Option<Backing> {
        if va < self.config.shadow_start || va >= self.config.shadow_end {
            return None;
        }
        match self.probe(va).slot {
            Slot::Empty => None,
            Slot::Shared(k) => Some(Backing::Shared(k)),
            Slot::Private(f) => Some(Backing::Private(f)),
        }
    }

    /// Give back every private table (outside pinned ranges, the PML4
    /// aside) whose 512 entries are all shared of one kind: its parent
    /// entry points at that kind's shared table again, as re-sharing does
    /// when a private page goes. Flips between shared kinds leave such
    /// tables behind (see the module docs); a shrinker calls this. Returns
    /// the tables freed, after one TLB flush.
    pub fn reshare_uniform(&mut self) -> usize {
        if !self.config.reshare {
            return 0;
        }
        let before = self.stats.reshares;
        let mut va = self.config.shadow_start;
        while va < self.config.shadow_end {
            let idx = Level::Pml4.index(va);
            if let Slot::Private(t) = self.classify(Level::Pml4, self.read(self.pml4, idx)) {
                self.sweep(self.pml4, Level::Pml4, idx, t, va);
            }
            va += Level::Pml4.span();
        }
        self.drain();
        (self.stats.reshares - before) as usize
    }

    /// [`Self::reshare_uniform`] below entry `idx` of `parent` (a table of
    /// `level`), which points at the private table `t` covering from `va`:
    /// the tables under `t` first, then `t` itself.
    fn sweep(&mut self, parent: PhysAddr, level: Level, idx: usize, t: PhysAddr, va: usize) {
        let Some(below) = level.below() else { return };
        if below.below().is_some() {
            for i in 0..ENTRIES {
                if let Slot::Private(c) = self.classify(below, self.read(t, i)) {
                    self.sweep(t, below, i, c, va + i * below.span());
                }
            }
        }
        let Slot::Shared(kind) = self.classify(below, self.read(t, 0)) else { return };
        if self.pinned(below, va) || !self.uniform(t, below, kind) {
            return;
        }
        self.write(parent, idx, self.enc.shared(self.shared.target(kind, level)));
        self.defer(Freed::Table(t, below), va, true);
        self.stats.reshares += 1;
    }

    /// Give every PML4 slot of the region a private PDPT and never change
    /// the region's PML4 entries again (costs one frame per 512 GiB: 32 for
    /// Linux's region). Needed when the kernel copies its PML4 entries into
    /// other address spaces: afterwards, the copies never go stale.
    pub fn pin_top_level(&mut self) -> Result<(), MapError> {
        let mut va = self.config.shadow_start;
        while va < self.config.shadow_end {
            let mut p = self.probe(va);
            if p.level == Level::Pml4 {
                let got = self.alloc_frames(1)?;
                self.unshare_down(&mut p, va, &got[..1]);
            }
            va += Level::Pml4.span();
        }
        self.top_pinned = true;
        Ok(())
    }

    /// Pre-allocate private page tables (down to the PTs, copies of what is
    /// mapped now) for every shadow page in `[start, end)` and pin them, so
    /// that a later `map_private` / `map_shared` of a single page in the
    /// range only needs the data frame itself and never frees a table.
    /// The range is rounded out to 2 MiB (one PT).
    pub fn unshare_range(&mut self, start: usize, end: usize) -> Result<(), PrepareError> {
        self.check_range(start, end)?;
        if start == end {
            return Ok(());
        }
        if !self.pins.add(start, end) {
            return Err(PrepareError::TooManyPins);
        }
        let step = Level::Pd.span();
        let mut va = start & !(step - 1);
        while va < end {
            let mut p = self.probe(va);
            if p.level != Level::Pt {
                let n = p.level as usize - 1;
                let got = self.alloc_frames(n)?;
                self.unshare_down(&mut p, va, &got[..n]);
            }
            match va.checked_add(step) {
                Some(v) => va = v,
                None => break,
            }
        }
        Ok(())
    }

    // ----- walking -----------------------------------------------------

    fn check_page(&self, page: usize) -> Result<(), MapError> {
        if !page.is_multiple_of(PAGE_SIZE)
            || page < self.config.shadow_start
            || page >= self.config.shadow_end
        {
            return Err(MapError::BadAddress);
        }
        Ok(())
    }

    fn check_range(&self, start: usize, end: usize) -> Result<(), MapError> {
        if !start.is_multiple_of(PAGE_SIZE)
            || !end.is_multiple_of(PAGE_SIZE)
            || start > end
            || start < self.config.shadow_start
            || end > self.config.shadow_end
        {
            return Err(MapError::BadAddress);
        }
        Ok(())
    }

    fn classify(&self, level: Level, raw: u64) -> Slot {
        if !is_present(raw) {
            return Slot::Empty;
        }
        let t = target(raw);
        match self.shared.kind_at(level, t) {
            Some(k) => {
                debug_assert!(raw & SHARED_MARK != 0, "shared target without mark");
                Slot::Shared(k)
            }
            None => {
                debug_assert!(raw & SHARED_MARK == 0, "marked entry to a private frame");
                Slot::Private(t)
            }
        }
    }

    /// Read entry `idx` of a table of ours.
    fn read(&self, table: PhysAddr, idx: usize) -> u64 {
        // SAFETY: every table the mapper reads is the PML4 or a frame it
        // allocated, all reachable through `mem` (contract of `new`).
        unsafe { read_entry(&self.mem, table, idx) }
    }

    /// Write entry `idx` of a table of ours (the PML4 or a private table).
    fn write(&self, table: PhysAddr, idx: usize, value: u64) {
        debug_assert!(
            [Level::Pd, Level::Pdpt, Level::Pml4]
                .iter()
                .all(|l| self.shared.kind_at(*l, table).is_none()),
            "write into a shared table"
        );
        // SAFETY: as `read`; the mapper owns the PML4 entries of the region
        // (contract of `new`) and its private tables; it never writes the
        // shared ones after building them.
        unsafe { write_entry(&self.mem, table, idx, value) }
    }

    fn slot(&self, table: PhysAddr, level: Level, va: usize) -> Slot {
        self.classify(level, self.read(table, level.index(va)))
    }

    fn probe(&self, va: usize) -> Probe {
        let mut tables = [PhysAddr::zero(); 4];
        let mut table = self.pml4;
        let mut level = Level::Pml4;
        loop {
            tables[level as usize - 1] = table;
            let slot = self.slot(table, level, va);
            match (slot, level.below()) {
                (Slot::Private(t), Some(below)) => {
                    table = t;
                    level = below;
                }
                _ => {
                    return Probe {
                        tables,
                        level,
                        slot,
                    }
                }
            }
        }
    }

    /// Whether the table of `level` covering `va` may never be freed.
    fn pinned(&self, level: Level, va: usize) -> bool {
        if level == Level::Pdpt && self.top_pinned {
            return true;
        }
        let span = level.span() * ENTRIES;
        let base = va & !(span - 1);
        self.pins.intersects(base, base.saturating_add(span))
    }

    /// Whether all entries of `table` (of `level`) are shared of `kind`.
    fn uniform(&self, table: PhysAddr, level: Level, kind: SharedPage) -> bool {
        let want = self.enc.shared(self.shared.target(kind, level));
        (0..ENTRIES).all(|i| same(self.read(table, i), want))
    }

    // ----- frames --------------------------------------------------------

    /// `n <= 4` frames, all or none.
    fn alloc_frames(&mut self, n: usize) -> Result<[PhysAddr; 4], MapError> {
        let mut got = [PhysAddr::zero(); 4];
        if !crate::frames::alloc_all(&mut self.frames, &mut got[..n]) {
            return Err(MapError::OutOfFrames);
        }
        Ok(got)
    }

    /// Make `t` a private table of `level` translating like `slot` did.
    fn init_table(&self, t: PhysAddr, level: Level, slot: Slot) {
        // SAFETY: `t` is a fresh frame from the source, reachable through
        // `mem` and not yet linked into the tables; the shared table copied
        // is one of ours and distinct from it.
        unsafe {
            match slot {
                Slot::Shared(k) => copy_table(&self.mem, t, self.shared.target(k, level)),
                Slot::Empty => fill_frame(&self.mem, t, 0),
                Slot::Private(_) => unreachable!("unsharing a private table"),
            }
        }
    }

    /// Replace the non-private tables on `p`'s path by the fresh frames
    /// `new` (one per level, top down), each a copy of what it replaces, so
    /// translations stay the same. Afterwards `p` describes the deeper slot.
    fn unshare_down(&mut self, p: &mut Probe, va: usize, new: &[PhysAddr]) {
        let mut level = p.level;
        let mut slot = p.slot;
        let mut table = p.tables[level as usize - 1];
        for &t in new {
            let below = level.below().expect("unsharing below a PT");
            self.init_table(t, level, slot);
            self.write(table, level.index(va), self.enc.private_table(t));
            self.stats.private_tables += 1;
            self.stats.peak_private_tables = self
                .stats
                .peak_private_tables
                .max(self.stats.private_tables);
            self.stats.unshares += 1;
            p.tables[below as usize - 1] = t;
            slot = self.slot(t, below, va);
            table = t;
            level = below;
        }
        p.level = level;
        p.slot = slot;
    }

    /// Unshare one entry (`slot`, not private) of `table` for a range op.
    fn unshare_one(
        &mut self,
        table: PhysAddr,
        level: Level,
        va: usize,
        slot: Slot,
    ) -> Result<PhysAddr, MapError> {
        let got = self.alloc_frames(1)?;
        let mut p = Probe {
            tables: [PhysAddr::zero(); 4],
            level,
            slot,
        };
        p.tables[level as usize - 1] = table;
        self.unshare_down(&mut p, va, &got[..1]);
        Ok(got[0])
    }

    // ----- deferred flush + free -------------------------------------------

    /// Remember `item` (whose entry was already changed) until the next flush.
    /// `full`: the change covers more than one page (a table entry).
    ///
    /// Once a full flush is due, pure translation changes need no slot; when
    /// the buffer fills with page flushes, it switches to one full flush
    /// (so a big range costs a CR3 reload, not one `invlpg` per page).
    fn defer(&mut self, item: Freed, va: usize, full: bool) {
        self.pending.full |= full;
        if self.pending.len == PENDING && !self.pending.full {
            self.pending.full = true;
            self.compact_pending();
        }
        if self.pending.full && matches!(item, Freed::Nothing) {
            return;
        }
        if self.pending.len == PENDING {
            self.drain();
            // The item's own entry changed after that flush: keep it due.
            self.pending.full = full;
        }
        self.pending.items[self.pending.len] = (item, va);
        self.pending.len += 1;
    }

    /// Drop deferred items that free nothing (a full flush covers them).
    fn compact_pending(&mut self) {
        let mut kept = 0;
        for i in 0..self.pending.len {
            if !matches!(self.pending.items[i].0, Freed::Nothing) {
                self.pending.items[kept] = self.pending.items[i];
                kept += 1;
            }
        }
        self.pending.len = kept;
    }

    /// Flush the TLB for everything deferred, then free the frames.
    fn drain(&mut self) {
        let n = self.pending.len;
        if n == 0 && !self.pending.full {
            return;
        }
        if self.pending.full {
            self.tlb.flush_all();
            self.stats.full_flushes += 1;
        } else {
            let mut last = None;
            for i in 0..n {
                let va = self.pending.items[i].1;
                if last != Some(va) {
                    self.tlb.flush_page(va);
                    self.stats.page_flushes += 1;
                    last = Some(va);
                }
            }
        }
        for i in 0..n {
            match self.pending.items[i].0 {
                Freed::Nothing => {}
                Freed::Page(f) => self.free_page(f),
                Freed::Table(t, level) => self.free_subtree(t, level),
            }
        }
        self.pending = Pending::new();
    }

    fn free_page(&mut self, f: PhysAddr) {
        self.frames.free_frame(f);
        self.stats.private_pages -= 1;
    }

    /// Free a detached private table and everything private below it.
    fn free_subtree(&mut self, table: PhysAddr, level: Level) {
        for i in 0..ENTRIES {
            if let Slot::Private(t) = self.classify(level, self.read(table, i)) {
                match level.below() {
                    Some(below) => self.free_subtree(t, below),
                    None => self.free_page(t),
                }
            }
        }
        self.frames.free_frame(table);
        self.stats.private_tables -= 1;
    }

    /// After the PT entry of `va` became shared of `kind`: replace every
    /// table on the path that is now uniformly `kind` by the shared one.
    fn collapse(&mut self, p: &Probe, va: usize, kind: SharedPage) {
        let mut level = Level::Pt;
        while let Some(above) = level.above() {
            let table = p.tables[level as usize - 1];
            if self.pinned(level, va) || !self.uniform(table, level, kind) {
                break;
            }
            let parent = p.tables[above as usize - 1];
            self.write(
                parent,
                above.index(va),
                self.enc.shared(self.shared.target(kind, above)),
            );
            self.defer(Freed::Table(table, level), va, false);
            self.stats.reshares += 1;
            level = above;
        }
    }

    /// `map_shared_range` within `table` (of `level`) for `[start, end)`.
    fn range_in(
        &mut self,
        table: PhysAddr,
        level: Level,
        start: usize,
        end: usize,
        kind: SharedPage,
    ) -> Result<(), MapError> {
        let span = level.span();
        let mut va = start;
        while va < end {
            let slot_start = va & !(span - 1);
            let slot_end = slot_start.saturating_add(span);
            let e = end.min(slot_end);
            let idx = level.index(va);
            let slot = self.classify(level, self.read(table, idx));
            let want = self.enc.shared(self.shared.target(kind, level));
            match level.below() {
                None => {
                    if slot != Slot::Shared(kind) {
                        self.write(table, idx, want);
                        let freed = match slot {
                            Slot::Private(f) => Freed::Page(f),
                            _ => Freed::Nothing,
                        };
                        self.defer(freed, va, false);
                    }
                }
                Some(below) => {
                    let whole = va == slot_start && e == slot_end;
                    if slot == Slot::Shared(kind) {
                        // Already all `kind` below.
                    } else if whole && !self.pinned(below, va) {
                        self.write(table, idx, want);
                        let freed = match slot {
                            Slot::Private(t) => Freed::Table(t, below),
                            _ => Freed::Nothing,
                        };
                        self.defer(freed, va, true);
                    } else {
                        let child = match slot {
                            Slot::Private(t) => t,
                            other => self.unshare_one(table, level, va, other)?,
                        };
                        self.range_in(child, below, va, e, kind)?;
                        if self.config.reshare
                            && !self.pinned(below, va)
                            && self.uniform(child, below, kind)
                        {
                            self.write(table, idx, want);
                            self.defer(Freed::Table(child, below), va, false);
                            self.stats.reshares += 1;
                        }
                    }
                }
            }
            va = e;
        }
        Ok(())
    }
}

// SAFETY: shared pages are only reachable through entries without WRITABLE
// (`Encoding::shared`), and the mapper never writes them after `build`;
// private frames are mapped in exactly one PT entry; every frame is given
// back only in `drain`, after `TlbFlush` removed all translations through
// it (whose contract covers every CPU); entries are published with single
// 8-byte stores after the table or page they point at is complete; the
// contract of `new` gives the mapper sole ownership of the region.
unsafe impl<F: FrameSource, M: PhysMem, T: TlbFlush> ShadowMapper for X86ShadowMapper<F, M, T> {
    /// Map `kind` over `[start, end)`; whole aligned blocks get the shared
    /// table of their size. Flushes (and frees replaced frames) before
    /// returning. On `OutOfFrames` (only possible for unaligned partial
    /// blocks of a different kind) a prefix of the range has been remapped.
    fn map_shared_range(
        &mut self,
        start: usize,
        end: usize,
        kind: SharedPage,
    ) -> Result<(), MapError> {
        self.check_range(start, end)?;
        let r = self.range_in(self.pml4, Level::Pml4, start, end, kind);
        self.drain();
        r
    }

    fn map_shared(&mut self, page: usize, kind: SharedPage) -> Result<Flush, MapError> {
        self.check_page(page)?;
        let mut p = self.probe(page);
        if p.slot == Slot::Shared(kind) {
            // SAFETY: the backend, for `page`, already mapped as asked: the
            // flush is at worst redundant.
            return Ok(unsafe { Flush::new(page) });
        }
        if p.level != Level::Pt {
            let n = p.level as usize - 1;
            let got = self.alloc_frames(n)?;
            self.unshare_down(&mut p, page, &got[..n]);
        }
        let pt = p.tables[0];
        self.write(
            pt,
            Level::Pt.index(page),
            self.enc.shared(self.shared.target(kind, Level::Pt)),
        );
        if let Slot::Private(f) = p.slot {
            self.defer(Freed::Page(f), page, false);
            if self.config.reshare {
                self.collapse(&p, page, kind);
            }
        }
        self.drain();
        // SAFETY: the backend, for `page`, whose PT entry it just rewrote.
        Ok(unsafe { Flush::new(page) })
    }

    fn map_private(&mut self, page: usize, fill: u8) -> Result<Flush, MapError> {
        self.check_page(page)?;
        let mut p = self.probe(page);
        if let (Level::Pt, Slot::Private(f)) = (p.level, p.slot) {
            // SAFETY: `f` is our private frame, reachable through `mem`.
            unsafe { fill_frame(&self.mem, f, fill) };
            // SAFETY: the backend, for `page`, whose private frame it just
            // refilled (same translation: the flush is at worst redundant).
            return Ok(unsafe { Flush::new(page) });
        }
        let n = p.level as usize - 1;
        let got = self.alloc_frames(n + 1)?;
        let leaf = got[n];
        // SAFETY: `leaf` is a fresh frame, reachable through `mem`, not mapped yet.
        unsafe { fill_frame(&self.mem, leaf, fill) };
        self.unshare_down(&mut p, page, &got[..n]);
        self.write(
            p.tables[0],
            Level::Pt.index(page),
            self.enc.private_leaf(leaf),
        );
        self.stats.private_pages += 1;
        self.stats.peak_private_pages = self.stats.peak_private_pages.max(self.stats.private_pages);
        // SAFETY: the backend, for `page`, whose PT entry it just pointed
        // at a fresh frame.
        Ok(unsafe { Flush::new(page) })
    }

    fn flush_page(&mut self, page: usize) {
        self.tlb.flush_page(page);
    }

    fn table_bytes(&self) -> usize {
        (self.stats.shared_tables + self.stats.private_tables) * PAGE_SIZE
    }

    fn table_peak_bytes(&self) -> usize {
        (self.stats.shared_tables + self.stats.peak_private_tables) * PAGE_SIZE
    }

    fn reshare(&mut self) -> usize {
        self.reshare_uniform()
    }
}
