#!/usr/bin/dash
# Check (i)'s fence command for `hanfs daemon` (HANFS_RIG_HA_DRIVER=daemon), what `rpower` is in
# an xCAT cluster.  The daemon runs it in netns mn as its `fence` and `fence_verify` argv:
#
#   ha-fence.sh SN off    take SN off: its LAN link down and its agent SIGKILLed, both checked
#                         (what rig.sh's ha_fence does for the script driver); exit 0 only then.
#                         While /run/ha/fence-fails holds a number > 0, it is decremented and the
#                         attempt fails without touching SN (a timed-out rpower), and the failure
#                         is recorded as a fence-failed event of the current round.
#   ha-fence.sh SN stat   prints "SN: off" when the link is down and the agent gone, else
#                         "SN: on" (xCAT's `rpower SN stat` prints the same words).
#
# Events go to /run/ha/events as rig.sh's ha_ev writes them ("NAME MS ROUND", MS of
# CLOCK_BOOTTIME); the round is the one in /run/ha/round.
SN=$1 WHAT=$2
ev() {
    read -r up rest < /proc/uptime
    round=?; read -r round < /run/ha/round
    echo "$1 $(( ${up%.*}${up#*.} * 10 )) $round" >> /run/ha/events
}
# the agent is gone when its /proc entry is, or it is a zombie (its parent, rig.sh, reaps it)
agent_gone() {
    read -r p < "/run/sn/$SN/ha-agent/pid" || return 0
    st=; read -r pid comm st rest < "/proc/$p/stat" 2> /dev/null || return 0
    [ "$st" = Z ]
}
link_down() {
    flags=$(ip -n "$SN" -o link show "ha-$SN") || return 1
    case $flags in *"<UP"*|*",UP"*) return 1 ;; esac
    return 0
}
case $WHAT in
    off)
        n=0; read -r n < /run/ha/fence-fails 2> /dev/null
        if [ "${n:-0}" -gt 0 ]; then
            echo $((n - 1)) > /run/ha/fence-fails
            ev fence-failed
            echo "$SN: fence attempt failed on purpose (the fence-fails round, or HANFS_RIG_HA_BREAK=nofence)" >&2
            exit 1
        fi
        ip -n "$SN" link set "ha-$SN" down || exit 1
        read -r p < "/run/sn/$SN/ha-agent/pid" && kill -9 "$p" 2> /dev/null
        i=0
        while ! agent_gone && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
        agent_gone && link_down || exit 1
        ev fence-cmd
        echo "$SN: off"
        ;;
    stat)
        if agent_gone && link_down; then echo "$SN: off"; else echo "$SN: on"; fi
        ;;
    *) echo "usage: ha-fence.sh SN off|stat" >&2; exit 2 ;;
esac
