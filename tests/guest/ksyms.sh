#!/usr/bin/env bash
# Copy a linked guest ELF to <out> and write the function symbol table into
# the `.ksyms` reservation of the copy (cargo's output stays untouched). Format: "KSYMS1\n", then sorted lines
# "<addr hex> <size hex> <demangled name>\n", then NUL. See boot/src/ksyms.rs.
set -euo pipefail
in=${1:?usage: ksyms.sh <guest elf> <out elf>}
elf=${2:?usage: ksyms.sh <guest elf> <out elf>}
marker='KSYMS-RESERVED-v1'
sysroot=$(rustc +nightly --print sysroot)
nm="$sysroot/lib/rustlib/$(rustc +nightly -vV | sed -n 's/^host: //p')/bin/llvm-nm"
[ -x "$nm" ] || { echo "ksyms.sh: $nm missing (rustup component add llvm-tools --toolchain nightly)" >&2; exit 3; }
off=$(grep -obUa "$marker" "$in" | head -1 | cut -d: -f1 || true)
if [ -z "$off" ]; then
    echo "ksyms.sh: no .ksyms reservation (marker $marker) in $in" >&2; exit 1
fi
cp "$in" "$elf.tmp" && mv "$elf.tmp" "$elf"
size=$(( $("$nm" "$elf" | awk '$3=="__ksyms_end"{print "0x"$1}') - $("$nm" "$elf" | awk '$3=="__ksyms_start"{print "0x"$1}') ))
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
{
    printf 'KSYMS1\n'
    "$nm" -n -S --defined-only -C "$elf" \
        | awk '{
                 if ($2 ~ /^[0-9a-f]+$/ && length($2) == 16) { sz=$2; ty=$3; f=4 } else { sz="0"; ty=$2; f=3 }
                 if (ty!="t" && ty!="T" && ty!="W" && ty!="w") next;
                 name=$f; for(i=f+1;i<=NF;i++) name=name" "$i;
                 if (length(name) > 240) name=substr(name,1,240);
                 a=$1; sub(/^0+/, "", a); sub(/^0+/, "", sz); if (sz=="") sz="0";
                 print a" "sz" "name }'
    printf '\0'
} > "$tmp"
len=$(stat -c %s "$tmp")
if [ "$len" -gt "$size" ]; then
    echo "ksyms.sh: table ($len bytes) larger than .ksyms ($size bytes); raise KSYMS_SIZE in linker.ld" >&2; exit 1
fi
dd if="$tmp" of="$elf" bs=1M seek="$off" oflag=seek_bytes conv=notrunc status=none
echo "ksyms.sh: $(($(wc -l < "$tmp") - 1)) symbols, $len bytes"
