//! PVH entry: 32-bit protected mode, paging off, ebx = &hvm_start_info.
//! Builds boot page tables (identity 0..1 GiB and 0xffffffff80000000 ->
//! 0..1 GiB, 2 MiB pages), enables PAE + long mode, zeroes .bss, switches to
//! the boot stack and calls `boot_entry64(start_info_phys)`.

core::arch::global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .balign 4
    .quad pvh_start32
    .balign 4

    .section .boot.text, "ax", @progbits
    .code32
    .global pvh_start32
pvh_start32:
    cli
    cld
    mov %ebx, %esi
    mov $boot_tables, %edi
    xor %eax, %eax
    mov $4096, %ecx
    rep stosl
    mov $boot_tables, %edi
    lea 0x1003(%edi), %eax
    mov %eax, (%edi)
    lea 0x2003(%edi), %eax
    mov %eax, 511*8(%edi)
    lea 0x3003(%edi), %eax
    mov %eax, 0x1000(%edi)
    mov %eax, 0x2000+510*8(%edi)
    lea 0x3000(%edi), %ebx
    xor %ecx, %ecx
1:
    mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, (%ebx,%ecx,8)
    movl $0, 4(%ebx,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov %cr4, %eax
    or $0x6a0, %eax          /* PAE | PGE | OSFXSR | OSXMMEXCPT */
    mov %eax, %cr4
    mov %edi, %cr3
    mov $0xC0000080, %ecx
    rdmsr
    or $0x900, %eax          /* LME | NXE */
    wrmsr
    mov %cr0, %eax
    or $0x80010001, %eax     /* PG | WP | PE */
    mov %eax, %cr0
    lgdt boot_gdt_desc
    ljmp $0x08, $boot_long_mode

    .code64
boot_long_mode:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    xor %eax, %eax
    mov %eax, %fs
    mov %eax, %gs
    movabs $__bss_start, %rdi
    movabs $__bss_end, %rcx
    sub %rdi, %rcx
    shr $3, %rcx
    xor %eax, %eax
    rep stosq
    movabs $boot_stack_top, %rsp
    xor %ebp, %ebp
    mov %esi, %edi
    movabs $boot_entry64, %rax
    call *%rax
2:
    hlt
    jmp 2b

    .section .boot.data, "aw", @progbits
    .balign 8
boot_gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
boot_gdt_end:
    .balign 8
boot_gdt_desc:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    .section .boot.bss, "aw", @nobits
    .balign 4096
    .global boot_tables
boot_tables:
    .skip 4096 * 4

    .section .bss.boot_stack, "aw", @nobits
    .balign 4096
    .global boot_stack_bottom
    .global boot_stack_top
boot_stack_bottom:
    .skip 262144
boot_stack_top:

    .section .ksyms_hdr, "a", @progbits
    .ascii "KSYMS-RESERVED-v1\n"
    .byte 0
    .text
    "#,
    options(att_syntax)
);
