#!/usr/bin/perl
# Development harness, not xCAT code: asks xCAT's own Table.pm where it would open its tables.
# It calls xCAT::Table::get_xcatcfg (perl-xCAT/xCAT/Table.pm:816-848: $XCATCFG, else the first
# line of /etc/xcat/cfgloc, else SQLite in /opt/xcat/cfg, else in /etc/xcat) and then
# xCAT::Table->new('nodelist'), whose data-source code (Table.pm:925-955) builds the DBI data
# source, user and password; DBI->connect is replaced by a recorder so no server is needed, and
# sleep by a no-op so the connect retries (Table.pm:962-980) do not wait. Prints them as JSON.
#
# tests/cfgloc.rs runs it once per case in a private mount namespace whose /etc and /opt it
# arranges (`unshare -m`):   perl cfgloc-truth.pl XCAT_SRC
use strict;
use warnings;
no warnings qw(once redefine);

my $src;
BEGIN {
    $src = shift @ARGV or die "usage: $0 XCAT_SRC\n";
    $::XCATROOT = "$src/perl-xCAT";
    *CORE::GLOBAL::sleep = sub { 0 };
}
use lib "$src/perl-xCAT";
use JSON;
use DBI;
require xCAT::Table;

my @connects;
*DBI::connect = sub { my ($class, $dsn, $user, $pass) = @_; push @connects, [ $dsn, $user, $pass ]; return undef };

my $cfg = eval { xCAT::Table::get_xcatcfg() };
my $err = $@;
eval { local $SIG{__WARN__} = sub {}; xCAT::Table->new('nodelist', -create => 1) } unless $err;
print JSON->new->canonical->encode({
    xcatcfg => $cfg,
    error => ($err ? "$err" : undef),
    dsn => (@connects ? $connects[0][0] : undef),
    user => (@connects ? $connects[0][1] : undef),
    password => (@connects ? $connects[0][2] : undef),
}), "\n";
