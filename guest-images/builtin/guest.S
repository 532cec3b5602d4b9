/*
 * guestwalk built-in test guest (x86-64, GNU as, AT&T syntax).
 *
 * The VMM loads this flat binary at GPA 0x100000 and enters it in 64-bit long mode on
 * its own identity boot page tables (first 1 GiB), in 5-level paging (CR4.LA57, a PML5
 * root) when the vCPU's CPUID offers LA57 and in 4-level paging otherwise, with:
 *   RDI = mode: 0 normal, 1 hostile, 2 triple-fault, 3 dirty-writer, 4 bulk dirty-writer,
 *         5 park (normal, plus a PARK event after every heartbeat)
 *   RSI = guest RAM size in bytes
 * APs (vCPUs other than the BSP) start at image + 0x10 and spin there without exits.
 *
 * The guest builds its own page tables in its own RAM (the pool at 0x200000), with the
 * paging depth it was started in (CR4.LA57 cannot change in long mode), loads
 * its own CR3 (with a PCID when the CPU has one), touches the test pages so the CPU
 * sets accessed/dirty bits, writes a descriptor of every leaf it mapped, reports
 * READY(descriptor GPA) on the debug port and then loops: write through one mapping,
 * verify through an alias, switch between its two address spaces, heartbeat, poll
 * for FINISH. Console text goes to port 0xE9 (debugcon). The debug-port protocol and
 * the descriptor format are documented in vmm/core/src/devices/debug_port.rs and
 * vmm/core/src/guest/descriptor.rs.
 *
 * Only plain instructions: PVM (the paging-based nested KVM this is tested on) cannot
 * emulate cmpxchg16b, xsave/xrstor or a CPL0 int3.
 */

    /* ---- debug port (see vmm/core/src/devices/debug_port.rs) ---- */
    .set DEBUGCON_PORT,     0xe9
    .set DEBUG_EVENT_PORT,  0x600
    .set DEBUG_ARG_LO_PORT, 0x604
    .set DEBUG_ARG_HI_PORT, 0x608
    .set EV_READY,      1
    .set EV_DONE,       2
    .set EV_HEARTBEAT,  3
    .set EV_ROUND_DONE, 5
    .set EV_PARK,       6
    .set CMD_FINISH,    1
    .set CMD_NEXT_ROUND, 2
    .set MODE_DIRTY,    3
    .set MODE_BULK,     4
    .set MODE_PARK,     5
    .set RECORD_MAX,    32          /* pages per round record (ROUND_RECORD_MAX_PAGES) */
    .set SMALL_PAGE_COUNT, 9        /* entries of small_pages */

    /* ---- page-table entry bits (Intel SDM vol. 3, 4.5) ---- */
    .set PTE_P,        0x1
    .set PTE_RW,       0x2
    .set PTE_US,       0x4
    .set PTE_PWT,      0x8
    .set PTE_PCD,      0x10
    .set PTE_PS,       0x80
    .set PTE_PAT_4K,   0x80          /* PAT bit of a 4 KiB PTE */
    .set PTE_G,        0x100
    .set PTE_PAT_HUGE, 0x1000        /* PAT bit of a 2 MiB / 1 GiB leaf */
    .set PTE_ADDR_MASK, 0x000ffffffffff000

    /* ---- descriptor flag bits above the hardware bits ---- */
    .set DF_WROTE,  0x0100000000000000  /* bit 56: written before READY */
    .set DF_READ,   0x0200000000000000  /* bit 57: read before READY */
    .set DF_EFF_W,  58
    .set DF_EFF_U,  59
    .set DF_EFF_NX, 60

    /* ---- descriptor features ---- */
    .set FEAT_1G,   0x1
    .set FEAT_PCID, 0x2
    .set FEAT_LA57, 0x4
    .set FEAT_NX,   0x8

    /* ---- guest-physical layout (mirrors vmm/core/src/arch/x86_64/layout.rs) ---- */
    .set IMAGE_START, 0x100000
    .set POOL_START,  0x200000      /* page-table pool, one 2 MiB page */
    .set POOL_END,    0x400000
    .set FRAME_BASE,  0x400000      /* 4 KiB test frames F0..F31 */
    .set F0,  FRAME_BASE + 0x0000
    .set F5,  FRAME_BASE + 0x5000
    .set F7,  FRAME_BASE + 0x7000
    .set F8,  FRAME_BASE + 0x8000
    .set F9,  FRAME_BASE + 0x9000
    .set F10, FRAME_BASE + 0xa000
    .set F11, FRAME_BASE + 0xb000
    .set F12, FRAME_BASE + 0xc000   /* F12, F13: the user pages */
    .set F14, FRAME_BASE + 0xe000   /* hostile fan-out target */
    .set SPACE_FRAME_A, FRAME_BASE + 0x10000
    .set SPACE_FRAME_B, FRAME_BASE + 0x11000
    .set BIG0, 0x600000             /* 2 MiB test frames */
    .set BIG1, 0x800000
    .set BIG2, 0xa00000
    .set MIN_RAM, 0x1000000         /* the guest uses RAM below 16 MiB */

    /* ---- bulk dirty-writer mode (vmm/core/src/guest/mod.rs, "Bulk dirty-writer mode") ---- */
    .set BULK_REQUEST, FRAME_BASE + 0x1e000 /* F30: the VMM's request, read each round */
    .set BULK_MAGIC, 0x31304b4c55425747     /* "GWBULK01" little-endian */
    .set BULK_RECORD, 0xc00000              /* round record, up to 16 MiB */
    .set BULK_RECORD_MAX, (0x400000 - 16) / 16
    .set BULK_START, MIN_RAM                /* RAM from here up is the bulk area */
    .set BULK_4K_MAX, 0x4000000             /* at most 64 MiB of it in 4 KiB leaves */
    .set BULK_VA, 0x40000000000             /* PML4[8]: VA = BULK_VA + GPA */
    .set HOLE_START, 0xc0000000             /* RAM above 3 GiB continues at 4 GiB */
    .set HOLE_END, 0x100000000
    .set GIB, 0x40000000
    .set MIB2, 0x200000

    /* ---- guest-virtual layout ---- */
    .set TEST_VA,   0x40000000          /* PML4[0] PDPT[1]: 4 KiB and 2 MiB test leaves */
    .set ALIAS_VA,  TEST_VA + 12 * 0x1000   /* maps F0..F3 a second time */
    .set BIG0_VA,   TEST_VA + 0x400000
    .set BIG1_VA,   TEST_VA + 0x600000
    .set BIG2_VA,   TEST_VA + 0x800000
    .set GIG_VA,    0xc0000000          /* PML4[0] PDPT[3]: 1 GiB leaf (if pdpe1gb) */
    .set USER_VA,   0x10000000000       /* PML4[2]: U/S=1 on every level */
    .set SPACE_VA,  0x20000000000       /* PML4[4]: differs per address space */
    .set DIRECT_VA, 0xffff888000000000  /* PML4[273]: PA 0..16 MiB, 2 MiB leaves */
    /* Only with 5-level paging: addresses beyond 48 bits (PML5 slots other than 0 and
     * 511 in the lower half; a kernel-half address canonical only with 57 bits). */
    .set HIGH_VA,   0x00abcdef12345000  /* PML5[171]: 4 KiB x 2, F18 F19, written */
    .set HIGH_KVA,  0xff11000000000000  /* PML5[273]: 2 MiB leaf of PA 0, read */
    .set F18, FRAME_BASE + 0x12000

    .set SPACE_A_MAGIC, 0xa5a5a5a50000000a
    .set SPACE_B_MAGIC, 0xb5b5b5b50000000b

    .set MAX_RUNS, 64
    .set RUN_SIZE, 40
    .set HEARTBEAT_EVERY, 256     /* power of two */
    .set SPIN_PER_ITERATION, 500  /* exit-free work between port polls */

    /* map_run touch argument values */
    .set T_NONE, 0
    .set T_READ, DF_READ
    .set T_RW,   DF_WROTE | DF_READ

/*
 * MAP va, pa, count, level, leaf_flags, table_flags, touch, nx
 * Maps `count` leaves of `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB) into the address
 * space whose root table (PML5 or PML4) is `cur_root` and records one descriptor run.
 * nx=1 adds the NX bit when the CPU has it.
 */
.macro MAP va, pa, count, level, leaf, table, touch, nx=0
    mov cur_root(%rip), %rdi
    movabsq $\va, %rsi
    movabsq $\pa, %rdx
    mov $\count, %rcx
    mov $\level, %r8
    movabsq $\leaf, %r9
    .if \nx
    or nx_bit(%rip), %r9
    .endif
    mov $\table, %r10
    movabsq $\touch, %r11
    call map_run
.endm

.macro FAIL code
    mov $\code, %edi
    jmp fail
.endm

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    jmp bsp_entry

    .balign 16
ap_entry:
    /* APs have nothing to do; they spin without exits so the VMM's pause (a signal
     * kick) is exercised on a vCPU that never leaves the guest on its own. */
1:  pause
    jmp 1b

bsp_entry:
    cli
    cld
    mov %rdi, %r12
    mov %rsi, %r13
    /* Zero .bss (our stack lives there) while still on the VMM's boot stack: the
     * flat binary does not carry it. */
    lea __bss_start(%rip), %rdi
    lea _end(%rip), %rcx
    sub %rdi, %rcx
    xor %eax, %eax
    rep stosb
    lea stack_top(%rip), %rsp
    mov %r12, mode(%rip)
    mov %r13, ram_size(%rip)
    /* Our own GDT, so the guest does not depend on VMM memory that its own page
     * tables do not map. Same selectors as the VMM's (code 0x08, data 0x10). */
    lgdt gdtr(%rip)

    lea msg_hello(%rip), %rdi
    call puts

    mov mode(%rip), %rax
    cmp $2, %rax
    je triple_fault
    cmp $MODE_PARK, %rax
    ja bad_mode
    mov ram_size(%rip), %rax
    cmp $MIN_RAM, %rax
    jb too_little_ram

    call detect_features
    call build_tables
    call enter_own_tables
    call touch_pages
    call finish_descriptor

    lea msg_ready(%rip), %rdi
    call puts
    mov $EV_READY, %edi
    lea descriptor(%rip), %rsi
    call debug_event

    cmpq $MODE_DIRTY, mode(%rip)
    je dirty_loop
    cmpq $MODE_BULK, mode(%rip)
    je dirty_loop

main_loop:
    /* r12 = iteration, r13 = current address space (0 = A, 1 = B) */
    xor %r12d, %r12d
    xor %r13d, %r13d
.Lloop:
    /* Continuity: what the last iteration wrote is still in memory, as r12 says. A VM
     * restored with registers and memory of different moments (or memory lost) fails
     * here with FAIL 12 instead of running on. */
    test %r12, %r12
    jz 5f
    cmp TEST_VA + 8, %r12
    jne .Lcontinuity_mismatch
    cmp BIG0_VA + 16, %r12
    jne .Lcontinuity_mismatch
5:  inc %r12
    /* Write the iteration to F0..F3 through TEST_VA, read it back through ALIAS_VA. */
    xor %ecx, %ecx
1:  mov %r12, %rax
    xor %rcx, %rax
    mov %rcx, %rdx
    shl $12, %rdx
    mov %rax, TEST_VA + 8(%rdx)
    cmp ALIAS_VA + 8(%rdx), %rax
    jne .Lalias_mismatch
    inc %ecx
    cmp $4, %ecx
    jb 1b
    /* Write through the 2 MiB leaf, read back through the direct map. */
    mov %r12, BIG0_VA + 16
    movabsq $DIRECT_VA + BIG0 + 16, %rdx
    cmp (%rdx), %r12
    jne .Ldirect_mismatch
    /* 5-level: write beyond 48 bits, read back through the direct map. */
    testl $FEAT_LA57, features(%rip)
    jz 4f
    movabsq $HIGH_VA + 24, %rdx
    mov %r12, (%rdx)
    movabsq $DIRECT_VA + F18 + 24, %rdx
    cmp (%rdx), %r12
    jne .Lhigh_mismatch
4:
    /* Switch address space; SPACE_VA holds a different value in each. */
    xor $1, %r13
    lea cr3_values(%rip), %rax
    mov (%rax,%r13,8), %rax
    mov %rax, %cr3
    lea space_magic(%rip), %rax
    mov (%rax,%r13,8), %rax
    movabsq $SPACE_VA, %rdx
    cmp (%rdx), %rax
    jne .Lspace_mismatch
    /* Some work that never exits, so a pause often lands in guest mode. */
    mov $SPIN_PER_ITERATION, %ecx
2:  dec %ecx
    jnz 2b
    test $(HEARTBEAT_EVERY - 1), %r12
    jnz 3f
    mov $EV_HEARTBEAT, %edi
    mov %r12, %rsi
    call debug_event
    /* Park mode: PARK with the iteration count; the VMM holds this vCPU at the OUT
     * until it lets it go (r12 is the proof it did not run on meanwhile). */
    cmpq $MODE_PARK, mode(%rip)
    jne 3f
    mov $EV_PARK, %edi
    mov %r12, %rsi
    call debug_event
3:  mov $DEBUG_EVENT_PORT, %dx
    in %dx, %eax
    cmp $CMD_FINISH, %eax
    jne .Lloop

report_done:
    lea msg_done(%rip), %rdi
    call puts
    mov $EV_DONE, %edi
    xor %esi, %esi
    call debug_event
    jmp halt_forever

/*
 * Dirty-writer mode (see vmm/core/src/guest/mod.rs for the table of pages): wait for
 * NEXT_ROUND, write this round's pages, write the round record, ROUND_DONE, repeat;
 * FINISH ends with DONE. Stays in address space A. r12 = round.
 */
dirty_loop:
    xor %r12d, %r12d
.Ldirty_wait:
    mov $DEBUG_EVENT_PORT, %dx
    in %dx, %eax
    cmp $CMD_FINISH, %eax
    je report_done
    cmp $CMD_NEXT_ROUND, %eax
    je 1f
    pause
    jmp .Ldirty_wait
1:  inc %r12
    cmpq $MODE_BULK, mode(%rip)
    je 2f
    call dirty_round
    mov $EV_ROUND_DONE, %edi
    lea round_record(%rip), %rsi
    call debug_event
    jmp .Ldirty_wait
2:  call bulk_round
    mov $EV_ROUND_DONE, %edi
    mov $BULK_RECORD, %esi
    call debug_event
    jmp .Ldirty_wait

/*
 * bulk_round: r12 = round. Reads the request {magic, pages, cluster} at BULK_REQUEST
 * (default without the magic: 1% of the bulk area, clusters of 64 pages), then writes
 * `pages` pages of the bulk area in `clusters` runs of `cluster` consecutive pages,
 * run c starting at page c * stride + phase (stride = bulk_pages / clusters, phase =
 * (977 * round) mod (stride - cluster + 1)), recording each (va, pa) in the record at
 * BULK_RECORD. A request that does not fit ends in DONE(10).
 */
bulk_round:
    push %rbx
    push %r13
    push %r14
    push %r15
    push %rbp
    movabsq $DIRECT_VA + BULK_REQUEST, %rsi
    movabsq $BULK_MAGIC, %rax
    cmp (%rsi), %rax
    jne 1f
    mov 8(%rsi), %r13               /* pages */
    mov 16(%rsi), %r14              /* cluster */
    jmp 2f
1:  mov bulk_pages(%rip), %rax
    xor %edx, %edx
    mov $100, %ecx
    div %rcx
    test %rax, %rax
    jnz 3f
    mov $1, %eax
3:  mov %rax, %r13
    mov $64, %r14d
    cmp %r13, %r14
    jbe 2f
    mov %r13, %r14
2:  /* 1 <= cluster <= pages <= min(bulk_pages, BULK_RECORD_MAX) */
    test %r14, %r14
    jz .Lbad_request
    cmp %r14, %r13
    jb .Lbad_request
    cmp bulk_pages(%rip), %r13
    ja .Lbad_request
    cmp $BULK_RECORD_MAX, %r13
    ja .Lbad_request
    /* clusters = ceil(pages / cluster) in r15; stride = bulk_pages / clusters in rbp */
    lea -1(%r13,%r14), %rax
    xor %edx, %edx
    div %r14
    mov %rax, %r15
    mov bulk_pages(%rip), %rax
    xor %edx, %edx
    div %r15
    mov %rax, %rbp
    cmp %r14, %rbp
    jb .Lbad_request
    /* phase = (977 * round) mod (stride - cluster + 1), kept on the stack */
    mov %rbp, %rcx
    sub %r14, %rcx
    inc %rcx
    imul $977, %r12, %rax
    xor %edx, %edx
    div %rcx
    push %rdx
    movabsq $DIRECT_VA + BULK_RECORD, %rbx
    mov %r12, 0(%rbx)
    movq $0, 8(%rbx)
    /* rcx = cluster index, rsi = page in cluster, r13 = pages left */
    xor %ecx, %ecx
4:  xor %esi, %esi
5:  test %r13, %r13
    jz 8f
    mov %rcx, %rax
    imul %rbp, %rax
    add (%rsp), %rax
    add %rsi, %rax                  /* page index in the bulk area */
    shl $12, %rax
    mov $BULK_START, %edx
    add %rax, %rdx                  /* GPA below the hole */
    cmp bulk_low_top(%rip), %rdx
    jb 6f
    sub bulk_low_top(%rip), %rdx
    movabsq $HOLE_END, %rax
    add %rax, %rdx                  /* GPA above 4 GiB */
6:  movabsq $BULK_VA, %rdi
    add %rdx, %rdi
    mov 8(%rbx), %rax               /* entry number */
    mov %r12, %r8
    shl $32, %r8
    or %rax, %r8
    mov %r8, (%rdi)                 /* the write: round << 32 | entry */
    mov %rax, %r8
    shl $4, %r8
    mov %rdi, 16(%rbx,%r8)
    mov %rdx, 24(%rbx,%r8)
    inc %rax
    mov %rax, 8(%rbx)
    dec %r13
    inc %rsi
    cmp %r14, %rsi
    jb 5b
    inc %rcx
    cmp %r15, %rcx
    jb 4b
8:  pop %rdx
    pop %rbp
    pop %r15
    pop %r14
    pop %r13
    pop %rbx
    ret
.Lbad_request:
    FAIL 10

/*
 * map_bulk: maps the bulk area of both RAM ranges at BULK_VA + GPA in cur_root (before
 * the second space copies the root): [16 MiB, low_top) and [4 GiB, 4 GiB + high),
 * each rounded down to 2 MiB. The first min(64 MiB, half the low part) with 4 KiB
 * leaves, the rest with 2 MiB leaves, and 1 GiB leaves for whole aligned GiBs when
 * the CPU has pdpe1gb. Sets bulk_low_top and bulk_pages.
 */
map_bulk:
    push %rbx
    push %r12
    push %r13
    mov ram_size(%rip), %rax
    mov $HOLE_START, %ecx
    cmp %rcx, %rax
    jbe 1f
    mov %rcx, %rax
1:  and $~(MIB2 - 1), %rax
    mov %rax, bulk_low_top(%rip)
    mov ram_size(%rip), %rbx
    sub %rax, %rbx                  /* RAM above the hole */
    and $~(MIB2 - 1), %rbx
    mov %rbx, bulk_high(%rip)
    sub $BULK_START, %rax
    mov %rax, %rdx
    add %rbx, %rdx
    shr $12, %rdx
    mov %rdx, bulk_pages(%rip)
    shr $1, %rax                    /* 4 KiB part: min(64 MiB, half), 2 MiB aligned */
    and $~(MIB2 - 1), %rax
    mov $BULK_4K_MAX, %ecx
    cmp %rcx, %rax
    jbe 2f
    mov %rcx, %rax
2:  mov %rax, %r13
    test %r13, %r13
    jz 3f
    mov cur_root(%rip), %rdi
    movabsq $BULK_VA + BULK_START, %rsi
    mov $BULK_START, %edx
    mov %r13, %rcx
    shr $12, %rcx
    mov $1, %r8d
    mov $(PTE_P | PTE_RW), %r9d
    mov $(PTE_P | PTE_RW), %r10d
    xor %r11d, %r11d
    call map_run
3:  lea BULK_START(%r13), %rdi
    mov bulk_low_top(%rip), %rsi
    call map_bulk_range
    movabsq $HOLE_END, %rdi
    mov %rdi, %rsi
    add bulk_high(%rip), %rsi
    call map_bulk_range
    pop %r13
    pop %r12
    pop %rbx
    ret

/* map_bulk_range: rdi = start GPA, rsi = end GPA (both 2 MiB aligned). 2 MiB leaves,
 * and 1 GiB leaves for the aligned whole GiBs inside when the CPU has pdpe1gb. */
map_bulk_range:
    push %r12
    push %r13
    mov %rdi, %r12
    mov %rsi, %r13
    testl $FEAT_1G, features(%rip)
    jz 2f
    /* 2 MiB up to the next GiB boundary (or the end) */
    lea GIB - 1(%r12), %rsi
    and $~(GIB - 1), %rsi
    cmp %r13, %rsi
    jbe 1f
    mov %r13, %rsi
1:  mov $2, %r8d
    call map_bulk_leaves
    /* whole GiBs */
    mov %r13, %rsi
    and $~(GIB - 1), %rsi
    cmp %r12, %rsi
    jbe 2f
    mov $3, %r8d
    call map_bulk_leaves
2:  mov %r13, %rsi
    mov $2, %r8d
    call map_bulk_leaves
    pop %r13
    pop %r12
    ret

/* map_bulk_leaves: r12 = start GPA (advanced), rsi = end GPA, r8 = level (2 or 3).
 * Maps [r12, rsi) with leaves of that level (nothing if empty). */
map_bulk_leaves:
    mov %rsi, %rcx
    sub %r12, %rcx
    jbe 1f
    mov %r8, %rax
    dec %rax
    imul $9, %rax
    add $12, %rax
    xchg %rax, %rcx
    shr %cl, %rax
    mov %rax, %rcx                  /* count */
    test %rcx, %rcx
    jz 1f
    push %rsi
    mov cur_root(%rip), %rdi
    movabsq $BULK_VA, %rsi
    add %r12, %rsi
    mov %r12, %rdx
    mov $(PTE_P | PTE_RW | PTE_PS), %r9d
    mov $(PTE_P | PTE_RW), %r10d
    xor %r11d, %r11d
    call map_run
    pop %rsi
    mov %rsi, %r12
1:  ret

/* dirty_round: r12 = round. Writes the round's pages, each recorded by record_write. */
dirty_round:
    push %rbx
    push %r13
    push %r14
    lea round_record(%rip), %rbx
    mov %r12, 0(%rbx)
    movq $0, 8(%rbx)
    /* 4 KiB leaves TEST_VA + k pages, k from small_pages, when (k + round) % 3 == 0 */
    xor %r13d, %r13d
1:  lea small_pages(%rip), %rsi
    movzbl (%rsi,%r13), %r14d       /* k */
    lea (%r14,%r12), %rax
    xor %edx, %edx
    mov $3, %ecx
    div %rcx
    test %rdx, %rdx
    jnz 2f
    mov %r14, %rax
    shl $12, %rax
    lea TEST_VA(%rax), %rdi
    lea FRAME_BASE(%rax), %rdx
    call record_write
2:  inc %r13
    cmp $SMALL_PAGE_COUNT, %r13
    jb 1b
    /* user pages: F12 when the round is odd, F13 when round % 4 == 2 */
    test $1, %r12
    jz 3f
    movabsq $USER_VA, %rdi
    mov $F12, %edx
    call record_write
3:  mov %r12, %rax
    and $3, %eax
    cmp $2, %eax
    jne 4f
    movabsq $USER_VA + 0x1000, %rdi
    mov $F12 + 0x1000, %edx
    call record_write
4:  /* the 2 MiB leaf at BIG0_VA: one page, (37 * round) % 512, when the round is odd */
    test $1, %r12
    jz 5f
    imul $37, %r12, %rax
    and $511, %eax
    shl $12, %rax
    lea BIG0_VA(%rax), %rdi
    lea BIG0(%rax), %rdx
    call record_write
5:  /* the 2 MiB leaf at BIG2_VA: pages (53 r) % 512 and (53 r + 200) % 512, r % 3 == 0 */
    mov %r12, %rax
    xor %edx, %edx
    mov $3, %ecx
    div %rcx
    test %rdx, %rdx
    jnz 6f
    imul $53, %r12, %r13
    mov %r13, %rax
    and $511, %eax
    shl $12, %rax
    lea BIG2_VA(%rax), %rdi
    lea BIG2(%rax), %rdx
    call record_write
    lea 200(%r13), %rax
    and $511, %eax
    shl $12, %rax
    lea BIG2_VA(%rax), %rdi
    lea BIG2(%rax), %rdx
    call record_write
6:  pop %r14
    pop %r13
    pop %rbx
    ret

/* record_write: rdi = va, rdx = pa, rbx = round record, r12 = round. Writes the round
 * number at va and appends (va, pa) to the record. Clobbers rax, r8. */
record_write:
    mov %r12, (%rdi)
    mov 8(%rbx), %rax
    cmp $RECORD_MAX, %rax
    jae .Lrecord_full
    mov %rax, %r8
    shl $4, %r8
    mov %rdi, 16(%rbx,%r8)
    mov %rdx, 24(%rbx,%r8)
    inc %rax
    mov %rax, 8(%rbx)
    ret
.Lrecord_full:
    FAIL 9

.Lalias_mismatch:
    FAIL 2
.Ldirect_mismatch:
    FAIL 3
.Lspace_mismatch:
    FAIL 4
.Lhigh_mismatch:
    FAIL 11
.Lcontinuity_mismatch:
    FAIL 12
bad_mode:
    FAIL 1
too_little_ram:
    FAIL 5

/* fail: edi = code. Reports DONE(code) and halts (the VMM ends the VM on HLT). */
fail:
    mov %edi, %ebx
    lea msg_fail(%rip), %rdi
    call puts
    mov %rbx, %rdi
    call puthex
    mov $10, %edi
    call putc
    mov $EV_DONE, %edi
    mov %rbx, %rsi
    call debug_event
halt_forever:
1:  hlt
    jmp 1b

triple_fault:
    lea msg_triple(%rip), %rdi
    call puts
    /* An IDT with limit 0: the #UD cannot be delivered, nor the #DF that follows,
     * so the CPU shuts down (a triple fault, KVM_EXIT_SHUTDOWN). */
    lidt empty_idtr(%rip)
    ud2

/* ---------------------------------------------------------------------------- */
/* CPU features: PCID, PGE, NX, 1 GiB pages; 5-level paging as the VMM started us. */
detect_features:
    push %rbx
    movl $39, top_shift(%rip)
    mov %cr4, %rax
    bt $12, %rax                    /* CR4.LA57: our tables need a PML5 root */
    jnc 6f
    orl $FEAT_LA57, features(%rip)
    movl $48, top_shift(%rip)
6:
    mov $1, %eax
    xor %ecx, %ecx
    cpuid
    bt $17, %ecx                    /* CPUID.1:ECX.PCID */
    jnc 1f
    orl $FEAT_PCID, features(%rip)
1:  bt $13, %edx                    /* CPUID.1:EDX.PGE: honour the G bit we set */
    jnc 2f
    mov %cr4, %rax
    or $0x80, %rax
    mov %rax, %cr4
2:  mov $0x80000000, %eax
    cpuid
    cmp $0x80000001, %eax
    jb 4f
    mov $0x80000001, %eax
    cpuid
    bt $20, %edx                    /* NX */
    jnc 3f
    orl $FEAT_NX, features(%rip)
    movabsq $0x8000000000000000, %rax
    mov %rax, nx_bit(%rip)
    mov %edx, %ebx
    mov $0xc0000080, %ecx           /* IA32_EFER: make sure NXE is on */
    rdmsr
    bt $11, %eax
    jc 5f
    bts $11, %eax
    wrmsr
5:  mov %ebx, %edx
3:  bt $26, %edx                    /* pdpe1gb: 1 GiB leaves */
    jnc 4f
    orl $FEAT_1G, features(%rip)
4:  pop %rbx
    ret

/* ---------------------------------------------------------------------------- */
/* Page tables. Built while still on the VMM's identity tables, so physical =     */
/* virtual for the pool.                                                           */
build_tables:
    call alloc_table
    mov %rax, root_a(%rip)
    mov %rax, cur_root(%rip)

    /* The guest itself: [IMAGE_START, _end) identity, 4 KiB, every page read below. */
    mov cur_root(%rip), %rdi
    mov $IMAGE_START, %esi
    mov $IMAGE_START, %edx
    lea _end(%rip), %rcx
    sub $IMAGE_START, %rcx
    shr $12, %rcx
    mov $1, %r8d
    mov $(PTE_P | PTE_RW), %r9d
    mov $(PTE_P | PTE_RW), %r10d
    movabsq $T_READ, %r11
    call map_run
    /* The table pool, identity, one 2 MiB leaf (not touched through this VA). */
    MAP POOL_START, POOL_START, 1, 2, PTE_P|PTE_RW|PTE_PS, PTE_P|PTE_RW, T_NONE

    /* 4 KiB test leaves. PT index 4 stays a hole (non-present PTE). */
    MAP TEST_VA,              F0,  4, 1, PTE_P|PTE_RW, PTE_P|PTE_RW, T_RW
    MAP TEST_VA+5*0x1000, F5,  2, 1, PTE_P, PTE_P|PTE_RW, T_READ
    MAP TEST_VA+7*0x1000, F7,  1, 1, PTE_P|PTE_RW, PTE_P|PTE_RW, T_NONE, 1
    MAP TEST_VA+8*0x1000, F8,  1, 1, PTE_P|PTE_RW|PTE_G, PTE_P|PTE_RW, T_READ
    MAP TEST_VA+9*0x1000, F9,  1, 1, PTE_P|PTE_RW|PTE_PWT, PTE_P|PTE_RW, T_NONE
    MAP TEST_VA+10*0x1000, F10, 1, 1, PTE_P|PTE_RW|PTE_PCD, PTE_P|PTE_RW, T_NONE
    MAP TEST_VA+11*0x1000, F11, 1, 1, PTE_P|PTE_RW|PTE_PAT_4K, PTE_P|PTE_RW, T_NONE
    /* The alias: F0..F3 again. */
    MAP ALIAS_VA,             F0,  4, 1, PTE_P|PTE_RW, PTE_P|PTE_RW, T_READ
    /* 2 MiB test leaves. PD index 1 (TEST_VA + 2 MiB) stays a hole (non-present PDE). */
    MAP BIG0_VA, BIG0, 1, 2, PTE_P|PTE_RW|PTE_PS, PTE_P|PTE_RW, T_RW
    MAP BIG1_VA, BIG1, 1, 2, PTE_P|PTE_PS|PTE_PAT_HUGE, PTE_P|PTE_RW, T_READ, 1
    MAP BIG2_VA, BIG2, 1, 2, PTE_P|PTE_RW|PTE_PS|PTE_PCD|PTE_PWT, PTE_P|PTE_RW, T_NONE
    /* PDPT index 2 (VA 2 GiB) stays a hole (non-present PDPTE). A 1 GiB leaf only
     * when the CPU has pdpe1gb; otherwise PDPT index 3 is a hole too. */
    testl $FEAT_1G, features(%rip)
    jz 1f
    MAP GIG_VA, 0, 1, 3, PTE_P|PTE_PS, PTE_P|PTE_RW, T_READ
1:
    /* PML4 index 1 stays a hole (non-present PML4E). User pages: U/S on every level. */
    MAP USER_VA, F12, 2, 1, PTE_P|PTE_RW|PTE_US, PTE_P|PTE_RW|PTE_US, T_RW
    /* Upper half: a direct map of PA 0..16 MiB, global and NX, 2 MiB leaves. */
    MAP DIRECT_VA, 0, 8, 2, PTE_P|PTE_RW|PTE_PS|PTE_G, PTE_P|PTE_RW, T_READ, 1
    /* 5-level only: a user-half address above 2^48 (PML5 slot 171; slots 1..170 stay
     * holes, but for hostile mode's 100..103) and a kernel-half address that is
     * canonical only with 57 bits. */
    testl $FEAT_LA57, features(%rip)
    jz 5f
    MAP HIGH_VA, F18, 2, 1, PTE_P|PTE_RW, PTE_P|PTE_RW, T_RW
    MAP HIGH_KVA, 0, 1, 2, PTE_P|PTE_PS|PTE_G, PTE_P|PTE_RW, T_READ, 1
5:
    /* The PML4 of space A: the root itself, or what PML5[0] points to. */
    mov root_a(%rip), %rdi
    call pml4_of
    mov %rax, pml4_a(%rip)

    cmpq $1, mode(%rip)
    jne 2f
    mov pml4_a(%rip), %rdi
    call build_hostile
    testl $FEAT_LA57, features(%rip)
    jz 2f
    mov root_a(%rip), %rdi
    call build_hostile_pml5
2:
    cmpq $MODE_BULK, mode(%rip)
    jne 4f
    call map_bulk
4:
    /* Second address space: a copy of the root (so it shares every lower table),
     * then one region that differs. With 5-level paging that region's PML4 (under
     * PML5[0]) is copied too, so that the spaces differ below it. */
    call alloc_table
    mov %rax, root_b(%rip)
    mov %rax, pml4_b(%rip)
    mov %rax, %rdi
    mov root_a(%rip), %rsi
    mov $512, %ecx
    rep movsq
    testl $FEAT_LA57, features(%rip)
    jz 6f
    call alloc_table
    mov %rax, pml4_b(%rip)
    mov %rax, %rdi
    mov pml4_a(%rip), %rsi
    mov $512, %ecx
    rep movsq
    mov root_a(%rip), %rsi
    mov (%rsi), %rdx
    and $0xfff, %edx                /* PML5[0]'s flags, pointing at B's own PML4 */
    or pml4_b(%rip), %rdx
    mov root_b(%rip), %rdi
    mov %rdx, (%rdi)
6:
    call duplicate_runs_for_space_b
    cmpq $1, mode(%rip)
    jne 3f
    /* The self-reference of space B points at B itself (with LA57: both of them). */
    mov pml4_b(%rip), %rax
    mov %rax, %rdx
    or $(PTE_P | PTE_RW), %rdx
    mov %rdx, 100 * 8(%rax)
    testl $FEAT_LA57, features(%rip)
    jz 3f
    mov root_b(%rip), %rax
    mov %rax, %rdx
    or $(PTE_P | PTE_RW), %rdx
    mov %rdx, 100 * 8(%rax)
3:
    mov root_a(%rip), %rax
    mov %rax, cur_root(%rip)
    MAP SPACE_VA, SPACE_FRAME_A, 1, 1, PTE_P|PTE_RW, PTE_P|PTE_RW, T_READ
    mov root_b(%rip), %rax
    mov %rax, cur_root(%rip)
    MAP SPACE_VA, SPACE_FRAME_B, 1, 1, PTE_P|PTE_RW, PTE_P|PTE_RW, T_READ
    /* The value that tells the spaces apart, written physically (identity). */
    movabsq $SPACE_A_MAGIC, %rax
    mov %rax, SPACE_FRAME_A
    movabsq $SPACE_B_MAGIC, %rax
    mov %rax, SPACE_FRAME_B
    ret

/*
 * build_hostile: rdi = PML4. Adversarial structures in PML4 slots the guest never
 * touches (16..47 and 100..103), so its own execution never walks them:
 *  - PML4[16..47] -> one PDPT whose 512 entries -> one PD whose 512 entries -> one
 *    PT whose 512 entries map F14: 32 * 512^3 leaves.
 *  - PML4[100] -> the PML4 itself.
 *  - PML4[101] -> a PDPT at GPA 0xf00000000 (60 GiB), outside RAM. Below 2^36, the
 *    smallest MAXPHYADDR, so it is outside memory on every CPU, never a reserved bit
 *    (0x700_0000_0000 was reserved on a CPU with MAXPHYADDR 40). Guests of 60 GiB
 *    or more would have RAM there.
 *  - PML4[102] -> a PDPT with: [0] a PD outside RAM, [1] bit 51 set (reserved when
 *    MAXPHYADDR <= 51), [2] a PD whose [0] is a 2 MiB leaf with bit 13 set (reserved)
 *    and whose [1] points at a PT outside RAM.
 *  - PML4[103] = that PDPT with PS set (PS is reserved in a PML4E).
 */
build_hostile:
    push %rbx
    push %r12
    mov %rdi, %rbx
    call alloc_table                /* fan-out PT */
    mov %rax, %rdi
    mov $(F14 | PTE_P), %rsi
    call fill_table
    mov %rdi, %rsi
    or $(PTE_P | PTE_RW), %rsi
    call alloc_table                /* fan-out PD */
    mov %rax, %rdi
    call fill_table
    mov %rdi, %rsi
    or $(PTE_P | PTE_RW), %rsi
    call alloc_table                /* fan-out PDPT */
    mov %rax, %rdi
    call fill_table
    mov %rdi, %rax
    or $(PTE_P | PTE_RW), %rax
    mov $16, %ecx
1:  mov %rax, (%rbx,%rcx,8)
    inc %ecx
    cmp $48, %ecx
    jb 1b
    /* self reference */
    mov %rbx, %rax
    or $(PTE_P | PTE_RW), %rax
    mov %rax, 100 * 8(%rbx)
    /* outside RAM */
    movabsq $0xf00000000 | PTE_P | PTE_RW, %rax
    mov %rax, 101 * 8(%rbx)
    call alloc_table
    mov %rax, %r12                  /* bad PDPT */
    call alloc_table                /* bad PD */
    movabsq $0xf00001000 | PTE_P | PTE_RW, %rdx
    mov %rdx, 0(%r12)
    mov %rax, %rdx
    or $(PTE_P | PTE_RW), %rdx
    mov %rdx, 16(%r12)
    bts $51, %rdx
    mov %rdx, 8(%r12)
    mov $(BIG0 | PTE_P | PTE_RW | PTE_PS | 0x2000), %edx
    mov %rdx, 0(%rax)
    movabsq $0xf00002000 | PTE_P | PTE_RW, %rdx
    mov %rdx, 8(%rax)
    mov %r12, %rax
    or $(PTE_P | PTE_RW), %rax
    mov %rax, 102 * 8(%rbx)
    or $PTE_PS, %rax
    mov %rax, 103 * 8(%rbx)
    pop %r12
    pop %rbx
    ret

/* pml4_of: rdi = root table. rax = the PML4 of the lower 256 TiB: the root itself in
 * 4-level paging, the table PML5[0] points to in 5-level paging. */
pml4_of:
    mov %rdi, %rax
    testl $FEAT_LA57, features(%rip)
    jz 1f
    mov (%rdi), %rax
    movabsq $PTE_ADDR_MASK, %rdx
    and %rdx, %rax
1:  ret

/*
 * build_hostile_pml5: rdi = PML5 (5-level paging only). Adversarial PML5 entries in
 * slots the guest never touches, besides those of build_hostile (which sit in the
 * PML4 under PML5[0]):
 *  - PML5[100] -> the PML5 itself (so VA 100 << 48 is one level short: it ends on
 *    the page table of VA 0..2 MiB, taking PML5, PML4, PDPT, PD as the lower levels);
 *  - PML5[101] -> a PML4 at GPA 0xf00003000, outside RAM (see build_hostile);
 *  - PML5[103] -> the lower PML4 with PS set (PS is reserved in a PML5E).
 */
build_hostile_pml5:
    mov %rdi, %rax
    or $(PTE_P | PTE_RW), %rax
    mov %rax, 100 * 8(%rdi)
    movabsq $0xf00003000 | PTE_P | PTE_RW, %rax
    mov %rax, 101 * 8(%rdi)
    mov pml4_a(%rip), %rax
    or $(PTE_P | PTE_RW | PTE_PS), %rax
    mov %rax, 103 * 8(%rdi)
    ret

/* fill_table: rdi = table, rsi = value for all 512 entries. Preserves rdi, rsi. */
fill_table:
    push %rdi
    mov %rsi, %rax
    mov $512, %ecx
    rep stosq
    pop %rdi
    ret

/* alloc_table: rax = a zeroed 4 KiB page from the pool. Preserves other registers. */
alloc_table:
    push %rdi
    push %rcx
    mov pool_next(%rip), %rax
    cmp $POOL_END, %rax
    jae .Lpool_exhausted
    lea 0x1000(%rax), %rcx
    mov %rcx, pool_next(%rip)
    mov %rax, %rdi
    push %rax
    xor %eax, %eax
    mov $512, %ecx
    rep stosq
    pop %rax
    pop %rcx
    pop %rdi
    ret
.Lpool_exhausted:
    FAIL 6

/*
 * map_run: rdi = root table (PML5 or PML4), rsi = va, rdx = pa, rcx = count, r8 = level, r9 = leaf flags,
 * r10 = flags for tables created on the way, r11 = touch bits (DF_WROTE/DF_READ).
 * Maps the leaves and records one descriptor run for the space of rdi.
 */
map_run:
    push %rbx
    push %r12
    push %r13
    push %r14
    push %r15
    push %rbp
    sub $8, %rsp
    mov %rsi, %r12                  /* va cursor */
    mov %rdx, %r13                  /* pa cursor */
    mov %rcx, %r14                  /* leaves left */
    mov %r11, %r15                  /* touch bits */
    mov %rcx, %rbp                  /* count, for the run */
    mov %rsi, (%rsp)                /* first va */
    mov %rdx, %rbx                  /* first pa */
    /* leaf size = 1 << (12 + 9 * (level - 1)) */
    lea -1(%r8), %rcx
    imul $9, %rcx
    add $12, %rcx
    mov $1, %eax
    shl %cl, %rax
    mov %rax, leaf_size(%rip)
    test %r14, %r14
    jz 2f
1:  mov %r12, %rsi
    mov %r13, %rdx
    call map_one
    add leaf_size(%rip), %r12
    add leaf_size(%rip), %r13
    dec %r14
    jnz 1b
2:  /* flags = leaf | touch | effective W/U/NX over the levels */
    mov %r9, %rax
    or %r15, %rax
    mov %r9, %rdx
    and %r10, %rdx
    test $PTE_RW, %rdx
    jz 3f
    bts $DF_EFF_W, %rax
3:  test $PTE_US, %rdx
    jz 4f
    bts $DF_EFF_U, %rax
4:  bt $63, %r9
    jnc 5f
    bts $DF_EFF_NX, %rax
5:  /* space: 1 when rdi is the second root */
    xor %esi, %esi
    cmp root_b(%rip), %rdi
    jne 6f
    mov $1, %esi
6:  mov %rax, %r9                   /* flags */
    mov %r8, %rdx                   /* level */
    mov (%rsp), %rcx                /* va */
    mov %rbx, %r10                  /* pa */
    mov %rbp, %r11                  /* count */
    call add_run
    add $8, %rsp
    pop %rbp
    pop %r15
    pop %r14
    pop %r13
    pop %r12
    pop %rbx
    ret

/*
 * map_one: rdi = root table, rsi = va, rdx = pa, r8 = level, r9 = leaf flags, r10 =
 * table flags. Walks down from the root (a PML5 with LA57, else a PML4), creating
 * missing tables, and writes the leaf. Tables already on the way get the table flags
 * added (with 5-level paging PML5[0] exists before the user pages are mapped: it must
 * gain U/S for them to be user pages). Preserves rdi, r8, r9, r10 and the
 * callee-saved registers.
 */
map_one:
    push %rbx
    push %r12
    /* rbx = shift of the leaf level */
    lea -1(%r8), %rbx
    imul $9, %rbx
    add $12, %rbx
    mov top_shift(%rip), %ecx       /* shift of the current level: 39 or 48 */
    mov %rdi, %r11                  /* current table */
1:  mov %rsi, %rax
    shr %cl, %rax
    and $0x1ff, %eax
    lea (%r11,%rax,8), %r12         /* r12 = &entry */
    cmp %rbx, %rcx
    jne 2f
    mov %rdx, %rax
    or %r9, %rax
    mov %rax, (%r12)
    pop %r12
    pop %rbx
    ret
2:  mov (%r12), %rax
    test $PTE_P, %rax
    jnz 3f
    call alloc_table
    mov %rax, %r11
    or %r10, %rax
    mov %rax, (%r12)
    jmp 4f
3:  test $PTE_PS, %rax              /* a leaf where we need a table: our own bug */
    jnz .Lmap_conflict
    mov %rax, %r11
    or %r10, %r11
    cmp %rax, %r11
    je 5f
    /* Only when a flag is missing: tables are written no more often than needed. */
    mov %r11, (%r12)
5:  movabsq $PTE_ADDR_MASK, %r11
    and %rax, %r11
4:  sub $9, %ecx
    jmp 1b
.Lmap_conflict:
    FAIL 7

/* add_run: esi = space, rdx = level, rcx = va, r10 = pa, r11 = count, r9 = flags. */
add_run:
    mov desc_run_count(%rip), %eax
    cmp $MAX_RUNS, %eax
    jae .Ltoo_many_runs
    imul $RUN_SIZE, %eax
    lea desc_runs(%rip), %rdi
    add %rax, %rdi
    mov %esi, 0(%rdi)
    mov %edx, 4(%rdi)
    mov %rcx, 8(%rdi)
    mov %r10, 16(%rdi)
    mov %r11, 24(%rdi)
    mov %r9, 32(%rdi)
    incl desc_run_count(%rip)
    ret
.Ltoo_many_runs:
    FAIL 8

/* Every run recorded so far is reachable from both PML4s: copy them as space 1. */
duplicate_runs_for_space_b:
    mov desc_run_count(%rip), %ecx
    lea (%rcx,%rcx), %eax
    cmp $MAX_RUNS, %eax
    ja .Ltoo_many_runs
    lea desc_runs(%rip), %rsi
    mov %ecx, %eax
    imul $RUN_SIZE, %eax
    lea (%rsi,%rax), %rdi           /* first free run */
    mov %ecx, %edx
1:  test %edx, %edx
    jz 2f
    mov $(RUN_SIZE / 8), %ecx
    rep movsq                       /* rsi, rdi advance by one run */
    movl $1, -RUN_SIZE(%rdi)        /* space = 1 */
    dec %edx
    jmp 1b
2:  shll $1, desc_run_count(%rip)
    ret

/* Load our own CR3; with PCID, enable CR4.PCIDE (needs CR3[11:0] = 0 at that point)
 * and reload with PCID 1 for space A, 2 for space B. */
enter_own_tables:
    mov root_a(%rip), %rax
    mov %rax, %cr3
    mov root_a(%rip), %rax
    mov root_b(%rip), %rdx
    testl $FEAT_PCID, features(%rip)
    jz 1f
    mov %cr4, %rcx
    bts $17, %rcx
    mov %rcx, %cr4
    or $1, %rax
    or $2, %rdx
1:  mov %rax, cr3_values(%rip)
    mov %rdx, cr3_values + 8(%rip)
    mov %rax, %cr3
    ret

/* Touch the test pages so the CPU sets accessed (read) and dirty (write) bits,
 * exactly as the descriptor's touch bits say. */
touch_pages:
    /* the guest image: read every page */
    mov $IMAGE_START, %edx
    lea _end(%rip), %rcx
1:  mov (%rdx), %rax
    add $0x1000, %rdx
    cmp %rcx, %rdx
    jb 1b
    /* F0..F3 written, alias read */
    xor %ecx, %ecx
2:  mov %rcx, %rdx
    shl $12, %rdx
    mov %rcx, TEST_VA(%rdx)
    mov ALIAS_VA(%rdx), %rax
    cmp %rcx, %rax
    jne .Lalias_mismatch
    inc %ecx
    cmp $4, %ecx
    jb 2b
    mov TEST_VA + 5 * 0x1000, %rax
    mov TEST_VA + 6 * 0x1000, %rax
    mov TEST_VA + 8 * 0x1000, %rax
    movq $1, BIG0_VA
    mov BIG1_VA, %rax
    testl $FEAT_1G, features(%rip)
    jz 3f
    mov $(GIG_VA + IMAGE_START), %edx   /* above 2 GiB: no sign-extended disp32 */
    mov (%rdx), %rax
3:  movabsq $USER_VA, %rdx
    movq $1, (%rdx)
    movq $1, 0x1000(%rdx)
    movabsq $DIRECT_VA, %rdx
    mov $8, %ecx
4:  mov (%rdx), %rax
    add $0x200000, %rdx
    dec %ecx
    jnz 4b
    /* 5-level only: the addresses beyond 48 bits */
    testl $FEAT_LA57, features(%rip)
    jz 5f
    movabsq $HIGH_VA, %rdx
    movq $1, (%rdx)
    movq $1, 0x1000(%rdx)
    movabsq $HIGH_KVA + IMAGE_START, %rdx
    mov (%rdx), %rax
5:
    /* SPACE_VA in both spaces, ending in A */
    movabsq $SPACE_VA, %rdx
    mov cr3_values + 8(%rip), %rax
    mov %rax, %cr3
    mov (%rdx), %rax
    mov cr3_values(%rip), %rax
    mov %rax, %cr3
    mov (%rdx), %rax
    ret

finish_descriptor:
    movl $2, desc_space_count(%rip)
    mov features(%rip), %eax
    mov %eax, desc_features(%rip)
    mov cr3_values(%rip), %rax
    mov %rax, desc_cr3(%rip)
    mov cr3_values + 8(%rip), %rax
    mov %rax, desc_cr3 + 8(%rip)
    ret

/* ---------------------------------------------------------------------------- */
/* Debug port.                                                                     */

/* debug_event: edi = event code, rsi = argument. */
debug_event:
    mov %rsi, %rax
    mov $DEBUG_ARG_LO_PORT, %dx
    out %eax, %dx
    shr $32, %rax
    mov $DEBUG_ARG_HI_PORT, %dx
    out %eax, %dx
    mov %edi, %eax
    mov $DEBUG_EVENT_PORT, %dx
    out %eax, %dx
    ret

/* putc: dil = byte */
putc:
    mov %edi, %eax
    mov $DEBUGCON_PORT, %dx
    out %al, %dx
    ret

/* puts: rdi = NUL-terminated string */
puts:
    mov %rdi, %rsi
1:  movzbl (%rsi), %eax
    test %al, %al
    jz 2f
    mov $DEBUGCON_PORT, %dx
    out %al, %dx
    inc %rsi
    jmp 1b
2:  ret

/* puthex: rdi = value, printed as 0x + 16 hex digits */
puthex:
    mov %rdi, %rsi
    mov $'0', %al
    mov $DEBUGCON_PORT, %dx
    out %al, %dx
    mov $'x', %al
    out %al, %dx
    mov $16, %ecx
1:  rol $4, %rsi
    mov %esi, %eax
    and $0xf, %eax
    lea hex_digits(%rip), %rdi
    movzbl (%rdi,%rax), %eax
    out %al, %dx
    dec %ecx
    jnz 1b
    ret

    .section .rodata
hex_digits: .ascii "0123456789abcdef"
/* dirty mode: the 4 KiB test leaves it may write (page index k from TEST_VA) */
small_pages: .byte 0, 1, 2, 3, 7, 8, 9, 10, 11
msg_hello:  .asciz "guestwalk builtin guest: building page tables\n"
msg_ready:  .asciz "guestwalk builtin guest: READY\n"
msg_done:   .asciz "guestwalk builtin guest: FINISH received, DONE\n"
msg_fail:   .asciz "guestwalk builtin guest: self-check failed, code "
msg_triple: .asciz "guestwalk builtin guest: triple-fault mode: empty IDT, then ud2\n"

    .section .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00af9b000000ffff        /* 0x08: 64-bit code, DPL 0 */
    .quad 0x00cf93000000ffff        /* 0x10: data, DPL 0 */
gdt_end:
gdtr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
empty_idtr:
    .word 0
    .quad 0
    .balign 8
space_magic:
    .quad SPACE_A_MAGIC
    .quad SPACE_B_MAGIC
pool_next:  .quad POOL_START

    /* The descriptor (format: vmm/core/src/guest/descriptor.rs). 8-byte aligned. */
    .balign 8
descriptor:
    .ascii "GWDESC01"               /* magic */
    .long 1                         /* version */
desc_run_count:   .long 0
desc_space_count: .long 0
desc_features:    .long 0
desc_cr3:         .quad 0, 0
desc_runs:        .fill MAX_RUNS * RUN_SIZE, 1, 0

    .section .bss
    .balign 8
mode:       .quad 0
ram_size:   .quad 0
features:   .long 0
top_shift:  .long 0                 /* 39, or 48 with LA57 (set by detect_features) */
    .balign 8
nx_bit:     .quad 0
root_a:     .quad 0                 /* CR3 tables: PML5 with LA57, else = pml4_* */
root_b:     .quad 0
pml4_a:     .quad 0                 /* PML4 of the lower 256 TiB of each space */
pml4_b:     .quad 0
cur_root:   .quad 0
leaf_size:  .quad 0
bulk_low_top: .quad 0
bulk_high:  .quad 0
bulk_pages: .quad 0
cr3_values: .quad 0, 0
    /* dirty mode: {round, count, count x (va, pa)}, own page so it is one known extra */
    .balign 4096
round_record: .fill 16 + 16 * RECORD_MAX, 1, 0
    .balign 16
stack:      .fill 16384, 1, 0
stack_top:
